"""``superpose schedules``: each scheduled function, when it runs next, how its last tick
ended. Times are UTC, as schedules are."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from superpose.cli import common

if TYPE_CHECKING:  # the client (and nats-py) is imported by the commands that use it
    from superpose.client.client import Client


def cmd_schedules(ns: argparse.Namespace) -> int:
    from superpose.client.schedules import list_schedules

    app = common.app_arg(ns.app) if ns.app is not None else None

    async def body(client: Client) -> int:
        rows = await list_schedules(await client.registry(), client.assets, client.nc, app)
        if ns.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print(
                "no schedules"
                + (f" in {app}" if app else "")
                + " (deploy a function with schedule=sp.Period(...) or sp.Cron('...'))"
            )
            return 0
        print("SCHEDULE  SPEC  NEXT RUN (UTC)  LAST RUN (UTC)  RESULT")
        for row in rows:
            print(_line(row))
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def _line(row: dict[str, Any]) -> str:
    last = row["last_run"]
    ran = "never  -" if last is None else f"{_utc(last['tick'])}  {_outcome(last)}"
    return f"{row['app']}.{row['fn']}  {row['schedule']}  {_utc(row['next_run'])}  {ran}"


def _outcome(last: dict[str, Any]) -> str:
    """``ok 0.2 s``, ``failed ValueError: bad day``, ``pending``, with its invocation id."""
    status = str(last["status"])
    if status == "ok":
        status = f"ok {last['duration_s']:.1f} s"
    elif status == "failed":
        error = last["error"]
        first = (error["message"].strip().splitlines() or [""])[0]
        status = f"failed {error['type']}: {first}"
    return f"{status}  {last['id']}"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def add_commands(add: common.AddCommand) -> None:
    p = add(
        "schedules",
        cmd_schedules,
        "list scheduled functions: their schedule, next run, last run and its result (UTC)",
    )
    p.add_argument("--app", metavar="APP", help="only this app's")
    p.add_argument("--json", action="store_true")
