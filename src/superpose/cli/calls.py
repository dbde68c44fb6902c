"""Calling functions and following what they did: ``call``, the durable-invocation commands
``result``, ``failed``, ``replay`` and ``cancel``, and ``logs``.

``result`` answers scripts through its exit status (``RESULT_HELP``), so a script can
tell "not yet" from "failed" from "cancelled" without parsing stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from superpose import protocol
from superpose.cli import common
from superpose.errors import BadRequestError, RemoteError

if TYPE_CHECKING:  # the client (and nats-py) is imported by the commands that use it
    from superpose.client.client import Client


def cmd_call(ns: argparse.Namespace) -> int:
    from superpose.client.arguments import check_call
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
        check_call(target, len(call_args["args"]), call_args["kwargs"])
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

    app = None if ns.app is None else common.app_arg(ns.app)

    async def body(client: Client) -> int:
        letters = await dead.list_failed(client.assets, app)
        if not letters and app is not None:  # a typo must not read as "all is well"
            (await client.registry()).versions_of(app)
        if ns.json:
            print(json.dumps([_letter_json(letter) for letter in letters], indent=2))
            return 0
        if not letters:
            print("no failed invocations" + (f" of {app}" if app else ""))
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


def cmd_logs(ns: argparse.Namespace) -> int:
    from superpose.client import logs

    app, _, fn = ns.target.partition(".")
    if not protocol.is_valid_name(app) or (fn and not protocol.is_valid_name(fn)):
        raise BadRequestError(f"{ns.target!r} is not APP or APP.FN (letters, digits, _ and -)")

    async def body(client: Client) -> int:
        async for record in logs.read(client, app, fn or None, follow=ns.follow):
            print(_log_line(record), flush=True)
        return 0

    try:
        return asyncio.run(common.with_client(ns.lattice, body))
    except KeyboardInterrupt:
        return 0


def _log_line(record: protocol.LogRecord) -> str:
    """A printed line as it was printed; a call's error as one ``✗`` line saying what
    it raised, then its traceback indented under it."""
    stamp = time.strftime("%H:%M:%S", time.localtime(record.ts))
    head = f"{stamp} [{record.fn}@{record.node}] "
    if record.stream != protocol.LOG_ERROR:
        return head + record.line
    summary, _, trace = record.line.partition("\n")
    indented = "".join(f"\n    {line}" for line in trace.rstrip().splitlines())
    return f"{head}✗ {summary}  (invocation {record.invocation}){indented}"


def add_commands(add: common.AddCommand) -> None:
    _add_call(add)
    _add_result(add)

    p = add("failed", cmd_failed, "list dead-lettered durable invocations (failed every attempt)")
    p.add_argument("--app", metavar="APP", help="only this app's")
    p.add_argument("--json", action="store_true")

    p = add("replay", cmd_replay, "run a dead-lettered invocation again; prints its new id")
    p.add_argument("id", help="invocation id, as `superpose failed` lists it")

    p = add("cancel", cmd_cancel, "cancel a durable invocation (exit 1 if it had already finished)")
    p.add_argument("id", help="invocation id")

    p = add("logs", cmd_logs, "show what an app's functions printed")
    p.add_argument("target", help="APP or APP.FN")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")


def _add_call(add: common.AddCommand) -> None:
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


def _add_result(add: common.AddCommand) -> None:
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
