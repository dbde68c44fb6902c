"""What ``superpose schedules`` shows: each schedule ``latest`` runs, when it runs next,
and what became of its last tick.

Read from three places, none of them kept for this listing alone: the registry
(what is scheduled), the schedules bucket (the last tick a node submitted) and the
results bucket (that tick's result, stored under its invocation id).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from superpose import protocol
from superpose.code.schedules import Scheduled, scheduled_in
from superpose.errors import NotFoundError, UserError
from superpose.lattice import results
from superpose.lattice.connection import Assets
from superpose.registry.mirror import LATEST, Registry


async def list_schedules(
    registry: Registry, assets: Assets, nc: NATS, app: str | None = None
) -> list[dict[str, Any]]:
    """One row per schedule (of one app, if given), by app and function name."""
    if app is not None and not registry.versions.get(app):
        raise NotFoundError(f"no app named {app!r} is deployed (see `superpose ls`)")
    apps = [app] if app is not None else sorted(registry.aliases)
    latest = []
    for name in apps:
        try:
            latest.append(registry.version(name, LATEST))
        except UserError:  # an app without a latest version has no schedules
            continue
    found = scheduled_in(latest)
    runs = await asyncio.gather(*(_last_run(assets.schedules, s) for s in found))
    ids = [run.id for run in runs if run is not None]
    stored = await results.get_many(nc, ids) if ids else {}
    now_ms = int(time.time() * 1000)
    return [_row(s, run, stored, now_ms) for s, run in zip(found, runs, strict=True)]


async def _last_run(kv: KeyValue, scheduled: Scheduled) -> protocol.ScheduleRun | None:
    try:
        entry = await kv.get(protocol.schedule_key(scheduled.app, scheduled.fn))
    except KeyNotFoundError:
        return None
    try:
        return protocol.ScheduleRun.from_json(entry.value or b"")
    except protocol.ProtocolError:
        return None


def _row(
    scheduled: Scheduled,
    run: protocol.ScheduleRun | None,
    stored: dict[str, protocol.Result],
    now_ms: int,
) -> dict[str, Any]:
    return {
        "app": scheduled.app,
        "fn": scheduled.fn,
        "schedule": repr(scheduled.schedule),
        "spec": scheduled.schedule.as_record(),
        "version": scheduled.version.id,
        "next_run": scheduled.schedule.next_after(now_ms) / 1000,
        "last_run": None if run is None else _last(run, stored.get(run.id)),
    }


def _last(run: protocol.ScheduleRun, result: protocol.Result | None) -> dict[str, Any]:
    """The last tick: when it was due, which version and node took it, how it ended."""
    row: dict[str, Any] = {
        "tick": run.tick_ms / 1000,
        "id": run.id,
        "version": run.digest,
        "submitted_by": run.node,
        "status": "pending",
    }
    if result is None:
        return row  # queued, running, or waiting for a retry
    row["finished"] = result.finished or None
    row["duration_s"] = result.duration_s
    row["attempts"] = result.attempts
    if result.error is None:
        row["status"] = "ok"
    elif result.error.kind == protocol.ERR_CANCELLED:
        row["status"] = "cancelled"
    else:
        row["status"] = "failed"
        row["error"] = {
            "kind": result.error.kind,
            "type": result.error.type,
            "message": result.error.message,
        }
    return row
