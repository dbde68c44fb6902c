"""The lattice's own processes: ``up``/``down`` for a local lattice, ``worker`` and ``gateway``
to join one, and ``status`` to see it.

``up`` starts the others in this module as child processes, so they share one place.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superpose import config
from superpose.cli import common, listening, routing
from superpose.cli.tenants import ACCOUNTS_SIGNAL
from superpose.errors import LatticeError, UserError
from superpose.local import lattice as local
from superpose.local import stopping
from superpose.local.state import (
    already_running,
    exclusive_home,
    lock_is_held,
    read_state,
    write_state,
)
from superpose.security.lookup import find_creds
from superpose.support import eventloop

if TYPE_CHECKING:  # the client (and nats-py) is imported by the commands that use it
    from superpose.client.client import Client

DOWN_TIMEOUT_S = 30.0


def cmd_up(ns: argparse.Namespace) -> int:
    home = config.settings().home
    listening.lattice_listen(ns)  # a malformed address is refused here, in both modes
    listening.gateway_listen(ns)
    if ns.detach:
        return _up_detached(ns, home)
    with exclusive_home(home):
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
        "--gateway-max-connections",
        str(ns.max_connections),
        "--quiet",
    ]
    if ns.slots:
        argv += ["--slots", str(ns.slots)]
    if ns.lattice_port is not None:
        argv += ["--lattice-port", str(ns.lattice_port)]
    if ns.servers != 1:
        argv += ["--servers", str(ns.servers)]
    if ns.sandbox:
        argv += ["--sandbox", ns.sandbox]
    return argv + listening.argv(ns)


def _up_detached(ns: argparse.Namespace, home: Path) -> int:
    """Run the foreground ``up`` in its own session and return once it is ready."""
    started = time.monotonic()
    if lock_is_held(home):
        raise already_running(home)
    log_path = home / "logs" / "up.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    config.state_file(home).unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        offset = log.tell()
        pid = _spawn_detached(
            _up_argv(ns), log.fileno(), {**os.environ, config.ENV_HOME: str(home)}
        )
    deadline = time.monotonic() + local.READY_TIMEOUT_S + 10
    while time.monotonic() < deadline:
        state = read_state(home)
        if state and state.get("ready") and state.get("pid") == pid:
            _print_ready(state, time.monotonic() - started, "stop with `superpose down`")
            return 0
        returncode = _exit_code(pid)
        if returncode is not None:
            with open(log_path, "rb") as log:
                log.seek(offset)
                tail = log.read()[-2000:].decode(errors="replace").strip()
            # The child's own `error: ...` line says what went wrong (port in use, ...).
            message = tail.removeprefix("error: ") if tail.count("\n") == 0 else tail
            raise LatticeError(f"`superpose up` failed: {message or f'exit {returncode}'}")
        time.sleep(0.02)
    os.kill(pid, signal.SIGTERM)
    raise LatticeError(f"the lattice did not become ready; see {home / 'logs'}")


def _spawn_detached(argv: list[str], log_fd: int, env: dict[str, str]) -> int:
    """Start ``argv`` in a session of its own, output to ``log_fd``; its pid.

    Not ``subprocess.Popen``: the child is meant to outlive this command, and a
    Popen object dropped while its child runs is a ResourceWarning under ``-X dev``.
    """
    return os.posix_spawn(
        argv[0],
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
        ],
        setsid=True,
    )


def _exit_code(pid: int) -> int | None:
    """The child's exit code once it has ended (reaping it), else None."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def _print_ready(state: dict[str, Any], elapsed_s: float, how_to_stop: str) -> None:
    print(f"lattice  {state['lattice']}")
    if state.get("gateway"):
        print(f"gateway  {state['gateway']}")
        from superpose.local.gateway_token import token_path

        token = token_path(config.settings().home)
        print(f"token    {token} (admin; send it as `Authorization: Bearer $(cat {token})`)")
    print(
        f"ready in {elapsed_s:.2f} s (state in {config.settings().home}); {how_to_stop}", flush=True
    )


async def _up_foreground(ns: argparse.Namespace, home: Path) -> int:
    started = time.monotonic()
    listen, gateway = listening.lattice_listen(ns), listening.gateway_listen(ns)
    lattice = local.LocalLattice(
        state_dir=home,
        workers=ns.workers,
        slots=ns.slots,
        lattice_port=listen.port,
        listen_host=listen.host,
        tls=listening.server_tls(ns, home, listen),
        servers=ns.servers,
        gateway_port=gateway.port,
        gateway_host=gateway.host,
        sandbox=ns.sandbox,
        gateway_max_connections=ns.max_connections,
    )
    lattice.on_restart = lambda: write_state(home, lattice)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # `superpose tenant create` made an account: the servers reload theirs.
    loop.add_signal_handler(ACCOUNTS_SIGNAL, lattice.reload_accounts)
    write_state(home, lattice, ready=False)
    try:
        await lattice.start()
        write_state(home, lattice)
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


async def _live_status(lattice: local.LocalLattice, stop: asyncio.Event) -> None:
    if not sys.stdout.isatty():
        return
    from rich.live import Live

    from superpose.client.client import Client
    from superpose.client.status import nodes

    client = await Client.open(lattice.url, tls_ca=lattice.tls_ca, creds=lattice.admin_creds)
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
    home = config.settings().home
    started = time.monotonic()
    outcome = stopping.stop_running(home, DOWN_TIMEOUT_S)
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


def cmd_worker(ns: argparse.Namespace) -> int:
    import logging
    import uuid

    from superpose.node import sandbox
    from superpose.node.agent import NodeAgent
    from superpose.node.config import NodeConfig
    from superpose.node.fork import fork_executor

    mode, why_not = sandbox.effective_mode(ns.sandbox or sandbox.default_mode())
    labels = common.parse_labels(ns.labels)
    trust_ca(ns.tls_ca)
    node_id = ns.node_id or f"n{uuid.uuid4().hex[:6]}"
    state_dir = Path(ns.state_dir) if ns.state_dir else config.settings().home / "nodes" / node_id
    try:
        node_config = NodeConfig(
            lattice=common.lattice_url(ns.lattice),
            node_id=node_id,
            state_dir=state_dir,
            slots=ns.slots or (os.cpu_count() or 1),
            labels=labels,
            drain_grace_s=ns.drain_grace,
            sandbox=mode,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    # Its executors connect as the node does, for now (issue 15 item 2 narrows them):
    # they inherit this environment, the forked one included.
    node_creds = find_creds(node_config.lattice)
    if node_creds is not None:
        os.environ[config.ENV_CREDS] = str(node_creds)
    # Before the event loop, threads or logging exist: the child shares our imports. Not
    # when sandboxed: a fork shares the node's memory too, and runs as the node's user.
    forked = fork_executor(node_config.lattice, node_id) if mode == sandbox.NONE else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if why_not:
        logging.getLogger("superpose.node").warning("%s", why_not)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        watch = loop.create_task(local.orphaned(ns.parent_pid))
        watch.add_done_callback(lambda _: stop.set())
        try:
            await NodeAgent(node_config, forked).run(stop)
        finally:
            watch.cancel()

    eventloop.run(run())
    return 0


def trust_ca(path: str | None) -> None:
    """``--tls-ca``: trusted by this process and all it starts (a node's executors),
    through ``$SUPERPOSE_TLS_CA``, which every connection reads."""
    if path is None:
        return
    if not Path(path).is_file():
        raise UserError(f"--tls-ca {path}: no such file")
    os.environ[config.ENV_TLS_CA] = str(Path(path).resolve())


def cmd_gateway(ns: argparse.Namespace) -> int:
    from superpose.gateway.app import serve
    from superpose.gateway.limits import Limits

    trust_ca(ns.tls_ca)
    url = common.lattice_url(ns.lattice)
    limits = Limits(
        max_connections=ns.max_connections,
        header_timeout_s=ns.header_timeout,
        body_timeout_s=ns.body_timeout,
    )
    eventloop.run(
        serve(
            url,
            ns.host,
            ns.port,
            max_body_bytes=ns.max_body_bytes,
            limits=limits,
            until=local.orphaned(ns.parent_pid),
        )
    )
    return 0


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
                f" sandbox={n['sandbox'] or '?'}"
            )
        print(f"{len(state['apps'])} app(s)")
        for app in state["apps"]:
            aliases = " ".join(f"{name}={digest[:12]}" for name, digest in app["aliases"].items())
            print(f"  {app['app']}  versions={len(app['versions'])} {aliases}".rstrip())
            for line in routing.rule_lines(app["routing"]):
                print(f"    {line}")
            common.print_untrusted(app["app"], app["untrusted"])
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def add_commands(add: common.AddCommand) -> None:
    _add_up(add)
    add("down", cmd_down, "stop the lattice `up` started in $SUPERPOSE_HOME", False)
    _add_worker(add)
    _add_gateway(add)
    p = add("status", cmd_status, "show the lattice: nodes, apps, versions")
    p.add_argument("--json", action="store_true")


def _add_up(add: common.AddCommand) -> None:
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
        "--servers",
        type=common.count(1),
        default=1,
        help=f"nats-servers, clustered if more than 1 (with 3, set {config.ENV_REPLICAS}=3)",
    )
    p.add_argument(
        "--gateway-port",
        type=common.port,
        default=config.DEFAULT_GATEWAY_PORT,
        help="HTTP gateway port on 127.0.0.1 (default 8700)",
    )
    listening.add_arguments(p)
    _add_sandbox(p)
    _add_max_connections(p, "--gateway-max-connections")
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)


TLS_CA_HELP = (
    f"the CA a tls:// lattice's certificate is checked against (else ${config.ENV_TLS_CA}, "
    "else the system's trust store)"
)


def _add_sandbox(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sandbox",
        choices=config.SANDBOX_MODES,
        help="how nodes confine user code: none, user (a user of its own per executor) or "
        "bwrap (that, inside bubblewrap); default user when root, else none "
        f"(or ${config.ENV_SANDBOX})",
    )


def _add_worker(add: common.AddCommand) -> None:
    p = add("worker", cmd_worker, "join a lattice as a node")
    p.add_argument("--tls-ca", metavar="FILE", help=TLS_CA_HELP)
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
    _add_sandbox(p)


def _add_gateway(add: common.AddCommand) -> None:
    p = add("gateway", cmd_gateway, "serve the HTTP gateway")
    p.add_argument("--tls-ca", metavar="FILE", help=TLS_CA_HELP)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=common.port, default=config.DEFAULT_GATEWAY_PORT)
    p.add_argument(
        "--max-body-bytes",
        type=common.count(1),
        default=config.MAX_HTTP_BODY_BYTES,
        help=f"largest request body accepted (default {config.MAX_HTTP_BODY_BYTES})",
    )
    _add_max_connections(p, "--max-connections")
    p.add_argument(
        "--header-timeout",
        type=float,
        default=config.GATEWAY_HEADER_TIMEOUT_S,
        help="seconds a client may take to send a request's headers "
        f"(default {config.GATEWAY_HEADER_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=config.GATEWAY_BODY_TIMEOUT_S,
        help="seconds a client may take to send a request's body, after its headers "
        f"(default {config.GATEWAY_BODY_TIMEOUT_S:g})",
    )
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)


def _add_max_connections(p: argparse.ArgumentParser, flag: str) -> None:
    """The gateway's connection cap, on ``gateway`` and (for its gateway) on ``up``."""
    p.add_argument(
        flag,
        dest="max_connections",
        type=int,
        default=config.GATEWAY_MAX_CONNECTIONS,
        help="gateway connections held open at once; past it the one slowest to send its "
        f"headers is dropped, else the new one gets 503 (default {config.GATEWAY_MAX_CONNECTIONS})",
    )
