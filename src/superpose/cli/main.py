"""The ``superpose`` command. The only module that prints or exits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superpose import config, protocol
from superpose.cli import common
from superpose.local import supervisor
from superpose.support import eventloop

if TYPE_CHECKING:  # the client (and nats-py) is imported by the commands that use it
    from superpose.client.client import Client
    from superpose.registry.mirror import Registry
    from superpose.registry.versions import Move
from superpose.errors import (
    BadRequestError,
    LatticeError,
    RemoteError,
    SuperposeError,
    UserError,
)

DOWN_TIMEOUT_S = 30.0


# --- up / down ------------------------------------------------------------------


def cmd_up(ns: argparse.Namespace) -> int:
    home = config.home()
    if ns.detach:
        return _up_detached(ns, home)
    with supervisor.exclusive_home(home):
        return eventloop.run(_up_foreground(ns, home))


def _up_argv(ns: argparse.Namespace) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "superpose",
        "up",
        "--workers",
        str(ns.workers),
        "--gateway-port",
        str(ns.gateway_port),
        "--quiet",
    ]
    if ns.slots:
        argv += ["--slots", str(ns.slots)]
    if ns.lattice_port is not None:
        argv += ["--lattice-port", str(ns.lattice_port)]
    return argv


def _up_detached(ns: argparse.Namespace, home: Path) -> int:
    """Run the foreground ``up`` in its own session and return once it is ready."""
    started = time.monotonic()
    if supervisor.lock_is_held(home):
        raise supervisor.already_running(home)
    log_path = home / "logs" / "up.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    config.state_file(home).unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        offset = log.tell()
        proc = subprocess.Popen(
            _up_argv(ns),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, config.ENV_HOME: str(home)},
        )
    deadline = time.monotonic() + supervisor.READY_TIMEOUT_S + 10
    while time.monotonic() < deadline:
        state = supervisor.read_state(home)
        if state and state.get("ready") and state.get("pid") == proc.pid:
            _print_ready(state, time.monotonic() - started, "stop with `superpose down`")
            return 0
        if proc.poll() is not None:
            with open(log_path, "rb") as log:
                log.seek(offset)
                tail = log.read()[-2000:].decode(errors="replace").strip()
            # The child's own `error: ...` line says what went wrong (port in use, ...).
            message = tail.removeprefix("error: ") if tail.count("\n") == 0 else tail
            raise LatticeError(f"`superpose up` failed: {message or f'exit {proc.returncode}'}")
        time.sleep(0.02)
    proc.terminate()
    raise LatticeError(f"the lattice did not become ready; see {home / 'logs'}")


def _print_ready(state: dict[str, Any], elapsed_s: float, how_to_stop: str) -> None:
    print(f"lattice  {state['lattice']}")
    if state.get("gateway"):
        print(f"gateway  {state['gateway']}")
    print(f"ready in {elapsed_s:.2f} s (state in {config.home()}); {how_to_stop}", flush=True)


async def _up_foreground(ns: argparse.Namespace, home: Path) -> int:
    started = time.monotonic()
    lattice = supervisor.LocalLattice(
        state_dir=home,
        workers=ns.workers,
        slots=ns.slots,
        lattice_port=ns.lattice_port if ns.lattice_port is not None else -1,
        gateway_port=ns.gateway_port,
    )
    lattice.on_restart = lambda: supervisor.write_state(home, lattice)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    supervisor.write_state(home, lattice, ready=False)
    try:
        await lattice.start()
        supervisor.write_state(home, lattice)
        if not ns.quiet:
            _print_ready(
                {"lattice": lattice.url, "gateway": lattice.gateway_url},
                time.monotonic() - started,
                "Ctrl-C to stop",
            )
            await _live_status(lattice, stop)
        await stop.wait()
    finally:
        if not ns.quiet:
            print("\nstopping: draining in-flight calls…", flush=True)
        await lattice.stop()
    return 0


async def _live_status(lattice: supervisor.LocalLattice, stop: asyncio.Event) -> None:
    if not sys.stdout.isatty():
        return
    from rich.live import Live

    from superpose.client.client import Client
    from superpose.client.status import nodes

    client = await Client.open(lattice.url)
    try:
        with Live(refresh_per_second=2, transient=True) as live:
            while not stop.is_set():
                found = await nodes(client)
                busy = sum(n.busy for n in found)
                slots = sum(n.slots for n in found)
                served = sum(n.served for n in found)
                live.update(
                    f"[bold]{len(found)}[/] nodes · {busy}/{slots} slots busy · "
                    f"{served} served · Ctrl-C to stop"
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await client.aclose()


def cmd_down(ns: argparse.Namespace) -> int:
    home = config.home()
    started = time.monotonic()
    outcome = supervisor.stop_running(home, DOWN_TIMEOUT_S)
    if not outcome.running:
        print(f"no lattice is running in {home}")
        return 0
    if outcome.leftovers:
        print(f"the lattice's supervisor in {home} had died; stopped the processes it left")
    elif outcome.killed:
        print(
            f"the lattice did not stop within {DOWN_TIMEOUT_S:.0f} s; killed "
            f"{len(outcome.killed)} process(es)"
        )
    print(f"lattice stopped in {time.monotonic() - started:.2f} s")
    return 0


# --- node and gateway processes ------------------------------------------------------


def cmd_worker(ns: argparse.Namespace) -> int:
    import logging
    import uuid

    from superpose.node.agent import NodeAgent
    from superpose.node.config import NodeConfig
    from superpose.node.executor_process import fork_executor

    labels = common.parse_labels(ns.labels)
    node_id = ns.node_id or f"n{uuid.uuid4().hex[:6]}"
    state_dir = Path(ns.state_dir) if ns.state_dir else config.home() / "nodes" / node_id
    try:
        node_config = NodeConfig(
            lattice=common.lattice_url(ns.lattice),
            node_id=node_id,
            state_dir=state_dir,
            slots=ns.slots or (os.cpu_count() or 1),
            labels=labels,
            drain_grace_s=ns.drain_grace,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    # Before the event loop, threads or logging exist: the child shares our imports.
    forked = fork_executor(node_config.lattice, node_id)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        watch = loop.create_task(supervisor.orphaned(ns.parent_pid))
        watch.add_done_callback(lambda _: stop.set())
        try:
            await NodeAgent(node_config, forked).run(stop)
        finally:
            watch.cancel()

    eventloop.run(run())
    return 0


def cmd_gateway(ns: argparse.Namespace) -> int:
    from superpose.gateway.app import serve

    url = common.lattice_url(ns.lattice)
    eventloop.run(
        serve(
            url,
            ns.host,
            ns.port,
            max_body_bytes=ns.max_body_bytes,
            until=supervisor.orphaned(ns.parent_pid),
        )
    )
    return 0


# --- apps -------------------------------------------------------------------------


def cmd_deploy(ns: argparse.Namespace) -> int:
    from superpose.client.deploy import deploy

    async def body(client: Client) -> int:
        done = await deploy(client, Path(ns.path), ns.name, asgi=ns.asgi)
        print(
            f"deployed {done.app} version {done.version[:12]}  "
            f"({done.files} files, {done.uploaded} uploaded, {done.size} bytes)"
        )
        print("functions: " + ", ".join(f"{done.app}.{f}" for f in done.functions))
        if done.asgi:
            print(f"http: {done.asgi} at /{done.app}/ on the gateway")
        print(done.version)
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_call(ns: argparse.Namespace) -> int:
    from superpose.client.options import Options
    from superpose.registry import routing
    from superpose.registry.mirror import split_name

    if ns.idempotency_key is not None and not ns.is_async:
        raise BadRequestError("--idempotency-key needs --async (it names a durable invocation)")
    if ns.timeout is not None and ns.is_async:
        raise BadRequestError(
            "--timeout applies to direct calls; for --async the function's own timeout holds"
        )
    body_json = common.parse_json_args(ns.args, ns.kwargs)
    app, fn, version = split_name(ns.name)
    options = Options(session=ns.session, pins=routing.parse_pins(ns.pin) or None, trace=ns.trace)

    async def body(client: Client) -> int:
        registry = await client.registry()
        call_args = json.loads(body_json)
        ctx = client.call_context(options, app, call_args["kwargs"], fn=fn, args=call_args["args"])
        target = registry.resolve(app, fn, version, ctx)
        if ctx.trace_id and ns.trace:
            common.err(f"trace {ctx.trace_id}: `superpose trace {ctx.trace_id}`")
        if ns.is_async:
            invocation_id = await client.invoke_json(
                target, body_json, idempotency_key=ns.idempotency_key, ctx=ctx
            )
            print(invocation_id, flush=True)
            return 0
        result = await client.call_json(target, body_json, ns.timeout, ctx=ctx)
        print(result.decode())
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


# --- durable invocations ------------------------------------------------------------

EXIT_PENDING = 3
"""`superpose result`: no result stored yet (or --timeout passed while waiting)."""
EXIT_CANCELLED = 4
"""`superpose result`: the invocation was cancelled."""

RESULT_HELP = f"""print the result of a durable invocation (from `call --async` or a spawn) as JSON

exit status:
  0  done: the JSON result is on stdout
  1  failed: the remote error (and traceback) is on stderr; also for a bad id
  {EXIT_PENDING}  pending: no result is stored yet (an unknown id looks the same),
     or --timeout passed while waiting
  {EXIT_CANCELLED}  cancelled"""


def cmd_result(ns: argparse.Namespace) -> int:
    from superpose.client import dead_letters as dead

    if ns.timeout is not None and ns.timeout < 0:
        raise BadRequestError(f"--timeout must be ≥ 0 seconds, got {ns.timeout:g}")
    wait = ns.wait or ns.timeout is not None

    async def body(client: Client) -> int:
        found = await client.result_async(ns.id, wait=wait, timeout=ns.timeout)
        status = dead.status_of(found)
        if found is None:
            why = f"after waiting {ns.timeout:g} s" if wait else "(wait for it with --wait)"
            common.err(f"pending: {ns.id} has no result yet {why}")
            return EXIT_PENDING
        if found.error is not None:
            if status == "cancelled":
                common.err(f"cancelled: {ns.id} was cancelled")
                return EXIT_CANCELLED
            raise RemoteError.from_info(found.error, found.node)
        print((await dead.result_json(client.nc, found)).decode(), flush=True)
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_failed(ns: argparse.Namespace) -> int:
    from superpose.client import dead_letters as dead

    if ns.app is not None and not protocol.is_valid_name(ns.app):
        raise BadRequestError(f"{ns.app!r} is not an app name (letters, digits, _ and -)")

    async def body(client: Client) -> int:
        letters = await dead.list_failed(client.assets, ns.app)
        if ns.json:
            print(json.dumps([_letter_json(letter) for letter in letters], indent=2))
            return 0
        if not letters:
            print("no failed invocations" + (f" of {ns.app}" if ns.app else ""))
        for letter in letters:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.failed))
            message = letter.error.message.strip().splitlines()
            first = message[0] if message else ""
            print(
                f"{letter.id}  {letter.app}.{letter.fn}  attempts={letter.attempts}  "
                f"{letter.error.type}: {first}  {when}"
            )
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def _letter_json(letter: protocol.DeadLetter) -> dict[str, Any]:
    error = letter.error
    return {
        "id": letter.id,
        "app": letter.app,
        "fn": letter.fn,
        "attempts": letter.attempts,
        "failed": letter.failed,
        "error": {
            "kind": error.kind,
            "type": error.type,
            "message": error.message,
            "traceback": error.traceback,
        },
    }


def cmd_replay(ns: argparse.Namespace) -> int:
    from superpose.client import dead_letters as dead

    async def body(client: Client) -> int:
        print(await dead.replay(client, ns.id), flush=True)
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_cancel(ns: argparse.Namespace) -> int:
    from superpose.client import dead_letters as dead

    async def body(client: Client) -> int:
        finished = await dead.cancel(client, ns.id)
        if finished is None:
            print(f"cancelled {ns.id}")
            return 0
        common.err(f"error: {ns.id} had already finished ({finished}); nothing to cancel")
        return 1

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_ls(ns: argparse.Namespace) -> int:
    async def body(client: Client) -> int:
        apps = (await client.registry()).describe()
        if ns.json:
            print(json.dumps(apps, indent=2))
            return 0
        if not apps:
            print("no apps deployed (try `superpose deploy ./examples/hello`)")
        for app in apps:
            latest = app["aliases"].get("latest", "")
            print(f"{app['app']}  ({len(app['versions'])} version(s), latest {latest[:12]})")
            for version in app["versions"]:
                marks = [a for a, d in app["aliases"].items() if d == version["version"]]
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(version["created"]))
                print(
                    f"  {version['version'][:12]}  {when}  {version['size']:>8} B  "
                    f"{', '.join(version['functions'])}"
                    + (f"  [{', '.join(marks)}]" if marks else "")
                )
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


# --- versions and aliases -------------------------------------------------------------


def cmd_versions(ns: argparse.Namespace) -> int:
    from superpose.registry import versions

    app = common.app_arg(ns.app)

    async def body(client: Client) -> int:
        found = versions.listing(await client.registry(), app)
        if ns.json:
            print(json.dumps(found, indent=2))
            return 0
        print(f"{app}: {len(found['versions'])} version(s), newest first")
        for row in found["versions"]:
            changes = row["changes"]
            diff = (
                f"+{changes['added']} -{changes['removed']} ~{changes['modified']}"
                if changes
                else "first"
            )
            marks = f"  [{', '.join(row['aliases'])}]" if row["aliases"] else ""
            print(
                f"  {row['version'][:12]}  {common.when(row['created'])}  {row['size']:>8} B  "
                f"{row['files']:>4} files  {diff:<14}{marks}".rstrip()
            )
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_alias(ns: argparse.Namespace) -> int:
    from superpose.registry import versions

    app = common.app_arg(ns.app)
    if ns.list or ns.name is None:
        return _list_aliases(ns.lattice, app)
    if ns.version is None:
        raise BadRequestError(
            f"say which version {ns.name!r} should point at: "
            f"`superpose alias {app} {ns.name} VERSION` (a digest prefix or an alias)"
        )
    return _move(ns.lattice, lambda registry: versions.move(registry, app, ns.name, ns.version))


def _list_aliases(url: str | None, app: str) -> int:
    from superpose.registry import versions

    async def body(client: Client) -> int:
        found = versions.listing(await client.registry(), app)
        created = {row["version"]: row["created"] for row in found["versions"]}
        width = max(map(len, found["aliases"]), default=0)
        for name, digest in found["aliases"].items():
            when = common.when(created[digest]) if digest in created else "unknown version"
            print(f"{name:<{width}}  → {common.short(digest)}  ({when})")
        return 0

    return asyncio.run(common.with_client(url, body))


def cmd_promote(ns: argparse.Namespace) -> int:
    from superpose.registry import versions

    app = common.app_arg(ns.app)
    return _move(ns.lattice, lambda registry: versions.promote(registry, app, ns.version))


def cmd_rollback(ns: argparse.Namespace) -> int:
    from superpose.registry import versions

    app = common.app_arg(ns.app)
    return _move(ns.lattice, lambda registry: versions.rollback(registry, app))


def _move(url: str | None, how: Callable[[Registry], Awaitable[Move]]) -> int:
    """Run one alias move and print it as old → new."""

    async def body(client: Client) -> int:
        move = await how(await client.registry())
        if move.changed:
            print(f"{move.app} {move.alias}: {common.short(move.old)} → {common.short(move.new)}")
        else:
            print(f"{move.app} {move.alias}: already {common.short(move.new)}; nothing moved")
        return 0

    return asyncio.run(common.with_client(url, body))


def cmd_status(ns: argparse.Namespace) -> int:
    from superpose.client.status import lattice_status

    async def body(client: Client) -> int:
        state = await lattice_status(client)
        if ns.json:
            print(json.dumps(state, indent=2))
            return 0
        print(f"lattice {state['lattice']}")
        print(f"{len(state['nodes'])} node(s)")
        for n in state["nodes"]:
            labels = ",".join(f"{k}={v}" for k, v in n["labels"].items()) or "-"
            warm = ",".join(d[:8] for d in n["warm"]) or "-"
            print(
                f"  {n['id']}  host={n['host']} labels={labels} slots={n['slots']} "
                f"busy={n['busy']} served={n['served']} (express {n['express']}) warm={warm}"
            )
        print(f"{len(state['apps'])} app(s)")
        for app in state["apps"]:
            aliases = " ".join(f"{name}={digest[:12]}" for name, digest in app["aliases"].items())
            print(f"  {app['app']}  versions={len(app['versions'])} {aliases}".rstrip())
            _print_routing(app["routing"])
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def _print_routing(rules: dict[str, Any]) -> None:
    """The routing rules of one app, and the calls each version served."""
    canary = rules["canary"]
    if canary:
        key = f" by {canary['key']}" if canary["key"] else ""
        print(f"    canary: {canary['percent']:g} % → {canary['version'][:12]}{key}")
    for fn, node in rules["pins"].items():
        print(f"    pinned: {fn} → {node}")
    for dep, digest in rules["lock"].items():
        print(f"    locked: {dep} → {digest[:12]}")
    total = sum(rules["traffic"].values())
    for digest, count in rules["traffic"].items():
        print(f"    served by {digest[:12]}: {count} ({100 * count / total:.1f} %)")


def cmd_logs(ns: argparse.Namespace) -> int:
    from superpose.client import logs

    app, _, fn = ns.target.partition(".")
    if not protocol.is_valid_name(app) or (fn and not protocol.is_valid_name(fn)):
        raise BadRequestError(f"{ns.target!r} is not APP or APP.FN (letters, digits, _ and -)")

    async def body(client: Client) -> int:
        async for record in logs.read(client, app, fn or None, follow=ns.follow):
            stamp = time.strftime("%H:%M:%S", time.localtime(record.ts))
            print(f"{stamp} [{record.fn}@{record.node}] {record.line}", flush=True)
        return 0

    try:
        return asyncio.run(common.with_client(ns.lattice, body))
    except KeyboardInterrupt:
        return 0


# --- parser ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="superpose", description="Run plain Python functions on a lattice of generic nodes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_text: str, lattice: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        if lattice:
            p.add_argument("--lattice", help=f"NATS URL of the lattice (or {config.ENV_LATTICE})")
        return p

    p = add("up", cmd_up, "start a local lattice: nats-server, nodes and the gateway", False)
    p.add_argument(
        "--workers", type=common.count(0), default=2, help="node agents to start (default 2)"
    )
    p.add_argument(
        "--slots", type=common.count(1), help="slots per node (default: cores / workers)"
    )
    p.add_argument("--detach", action="store_true", help="return once ready; stop with `down`")
    p.add_argument("--lattice-port", type=common.port, help="NATS port (default: a free one)")
    p.add_argument(
        "--gateway-port",
        type=common.port,
        default=config.DEFAULT_GATEWAY_PORT,
        help="HTTP gateway port on 127.0.0.1 (default 8700)",
    )
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)

    add("down", cmd_down, "stop the lattice `up` started in $SUPERPOSE_HOME", False)

    p = add("worker", cmd_worker, "join a lattice as a node")
    p.add_argument("--labels", help="KEY=VALUE,... advertised to the lattice")
    p.add_argument("--slots", type=common.count(1), help="invocations run at once (default: cores)")
    p.add_argument("--node-id", help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--state-dir", help=argparse.SUPPRESS)
    p.add_argument(
        "--drain-grace",
        type=float,
        default=10.0,
        help="seconds to finish in-flight calls on shutdown (default 10)",
    )

    p = add("gateway", cmd_gateway, "serve the HTTP gateway")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=common.port, default=config.DEFAULT_GATEWAY_PORT)
    p.add_argument(
        "--max-body-bytes",
        type=common.count(1),
        default=config.MAX_HTTP_BODY_BYTES,
        help=f"largest request body accepted (default {config.MAX_HTTP_BODY_BYTES})",
    )
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)

    p = add("deploy", cmd_deploy, "bundle a folder or .py file and make it the app's latest")
    p.add_argument("path")
    p.add_argument("--name", help="app name (default: the folder or file name)")
    p.add_argument(
        "--asgi",
        metavar="MODULE:ATTR",
        help="also serve this ASGI app (FastAPI, Starlette) at /APP/ on the gateway, e.g. main:app",
    )

    p = add(
        "call",
        cmd_call,
        "call APP.FN with JSON arguments and print the JSON result "
        "(with --async: persist it and print its id)",
    )
    p.add_argument("name", help="APP.FN or APP.FN@VERSION")
    p.add_argument("args", nargs="?", help="JSON array of positional arguments")
    p.add_argument("kwargs", nargs="?", help="JSON object of keyword arguments")
    p.add_argument(
        "--timeout", type=float, help="seconds (direct calls; overrides the function's timeout)"
    )
    p.add_argument(
        "--async",
        dest="is_async",
        action="store_true",
        help="persist a durable invocation and print its id (fetch it with `superpose result`)",
    )
    p.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="with --async: a key used before returns that invocation's id, not a new run",
    )
    p.add_argument("--session", help="session for canary splits (same session, same versions)")
    p.add_argument(
        "--pin", metavar="APP@VERSION,...", help="versions for this call's whole call graph"
    )
    p.add_argument(
        "--trace", action="store_true", help="record which versions answered; prints the trace id"
    )

    p = add("result", cmd_result, RESULT_HELP.splitlines()[0])
    p.description = RESULT_HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("id", help="invocation id")
    p.add_argument("--wait", action="store_true", help="wait until the result is stored")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="wait at most S seconds (implies --wait; exit 3 if it passes)",
    )

    p = add("failed", cmd_failed, "list dead-lettered durable invocations (failed every attempt)")
    p.add_argument("--app", metavar="APP", help="only this app's")
    p.add_argument("--json", action="store_true")

    p = add("replay", cmd_replay, "run a dead-lettered invocation again; prints its new id")
    p.add_argument("id", help="invocation id, as `superpose failed` lists it")

    p = add("cancel", cmd_cancel, "cancel a durable invocation (exit 1 if it had already finished)")
    p.add_argument("id", help="invocation id")

    p = add("ls", cmd_ls, "list apps, functions and versions")
    p.add_argument("--json", action="store_true")

    p = add("versions", cmd_versions, "list an app's versions: time, size, files changed, aliases")
    p.add_argument("app")
    p.add_argument("--json", action="store_true")

    p = add("alias", cmd_alias, "point an alias of an app at a version (or list the aliases)")
    p.add_argument("app")
    p.add_argument("name", nargs="?", help="alias name, e.g. stable")
    p.add_argument("version", nargs="?", help="digest prefix (6+ characters) or another alias")
    p.add_argument("--list", action="store_true", help="list the app's aliases")

    p = add("promote", cmd_promote, "make a version the app's latest")
    p.add_argument("app")
    p.add_argument("version", help="digest prefix (6+ characters) or an alias")

    p = add("rollback", cmd_rollback, "move latest back to the version it pointed at before")
    p.add_argument("app")

    p = add("status", cmd_status, "show the lattice: nodes, apps, versions")
    p.add_argument("--json", action="store_true")

    p = add("logs", cmd_logs, "show what an app's functions printed")
    p.add_argument("target", help="APP or APP.FN")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")

    from superpose.cli import routing as cli_routing

    cli_routing.add_commands(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        code: int = ns.func(ns)
    except RemoteError as exc:
        if exc.traceback:
            where = f" (node {exc.node})" if exc.node else ""
            common.err(f"{exc.traceback_label}{where}:\n{exc.traceback.rstrip()}")
        common.err(f"error: {exc.kind}: {exc.type}: {exc.remote_message}")
        return 1
    except SuperposeError as exc:
        common.err(f"error: {exc.message}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `superpose logs APP | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
