"""Scheduled functions: each node follows the registry and submits every tick it sees due.

There is no scheduler process to elect or fail over. Every node computes the same
ticks from what ``latest`` of each app records (``code/schedules.py``) and, when one
is due, submits it as a durable invocation whose id names the tick
(``protocol.schedule_invocation_id``), with that id as the work stream's message id.
JetStream keeps the first submission of a tick and drops the others (its duplicate
window is ten minutes), so N nodes make one run. The newest tick submitted is also
recorded, by compare-and-set, in the schedules bucket; a node reads it before
submitting, which covers what the window does not (a node that comes back an hour
late, a server restart after which the window may not know acked envelopes). From
there a tick is an ordinary durable invocation: retried within the function's
``retries``, redelivered if its node dies, dead-lettered when it fails for good, its
result stored under its id.

Ticks missed while no node could submit them (the lattice was down, or the node
could not reach it until the next tick was due) are not replayed, except the most
recent one, which runs late, once. A schedule that appears with a deploy, promote or
rollback starts at its next tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from superpose import protocol
from superpose.code.schedules import Schedule, Scheduled, scheduled_in
from superpose.code.settings import recorded_settings
from superpose.errors import UserError
from superpose.lattice import issued, payload
from superpose.lattice.batch import publish_atomic
from superpose.lattice.connection import ensure_work_consumer
from superpose.lattice.work import work_message
from superpose.node.link import Connected
from superpose.registry.mirror import LATEST, Registry
from superpose.registry.placement import call_needs
from superpose.support.retry import Backoff, retry

log = logging.getLogger("superpose.node.scheduler")

SUBMIT_RETRY = Backoff(0.25, factor=2, max_s=5.0)
"""Between tries to submit a due tick; a tick is given up once the next one is due."""
LONGEST_SLEEP_S = 60.0
"""A far tick is waited for in steps, so a corrected wall clock is noticed."""
NO_ARGUMENTS = bytes(payload.encode_args((), {}, protocol.CODEC_PICKLE))

Key = tuple[str, str]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Following:
    schedule: Schedule
    task: asyncio.Task[None]


class Scheduler:
    """Submits the due ticks of every schedule ``latest`` names, as this node sees them."""

    def __init__(self, host: Connected) -> None:
        self.host = host
        self._registry: Registry | None = None
        self._wanted: dict[Key, Scheduled] = {}
        """The scheduled functions of each app's ``latest``, with that version."""
        self._following: dict[Key, Following] = {}
        self._placed: set[str] = set()
        """Needs classes whose consumer this node has made sure of."""
        self._reconcile_soon = False

    async def start(self, registry: Registry) -> None:
        """Follow the schedules of a synced registry mirror. Those found now may owe the
        tick missed while the lattice was down; later ones start at their next tick."""
        self._registry = registry
        self._reconcile(catch_up=True)

    async def stop(self) -> None:
        tasks = [following.task for following in self._following.values()]
        self._following.clear()
        self._registry = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def registry_changed(self, key: str) -> None:
        """A version or an alias changed: look again, once per burst of changes."""
        kind = key.partition(".")[0]
        if self._registry is None or kind not in ("ver", "alias") or self._reconcile_soon:
            return
        self._reconcile_soon = True
        asyncio.get_running_loop().call_soon(self._reconcile, False)

    @property
    def following(self) -> dict[Key, Schedule]:
        return {key: following.schedule for key, following in self._following.items()}

    # --- which schedules -------------------------------------------------------------

    def _reconcile(self, catch_up: bool) -> None:
        self._reconcile_soon = False
        if self._registry is None:
            return
        self._wanted = {s.key: s for s in scheduled_in(_latest_versions(self._registry))}
        for key, following in list(self._following.items()):
            wanted = self._wanted.get(key)
            if wanted is None or wanted.schedule != following.schedule:
                following.task.cancel()
                del self._following[key]
                log.info("⏰ %s.%s: %r stopped", *key, following.schedule)
        for key, scheduled in self._wanted.items():
            if key not in self._following:
                task = asyncio.create_task(self._follow(key, scheduled.schedule, catch_up))
                self._following[key] = Following(scheduled.schedule, task)
                log.info("⏰ %s.%s: %r", *key, scheduled.schedule)

    # --- ticks -----------------------------------------------------------------------

    async def _follow(self, key: Key, schedule: Schedule, catch_up: bool) -> None:
        handled = await self._last_recorded(key, schedule) if catch_up else None
        if handled is None:
            handled = now_ms()  # nothing owed from before now
        while True:
            now = now_ms()
            due = schedule.latest_at_or_before(now)
            if due > handled:  # only the newest due tick: older missed ones are dropped
                await self._fire(key, schedule, due)
                handled = due
                continue
            wait_s = (schedule.next_after(now) - now) / 1000
            await asyncio.sleep(min(wait_s, LONGEST_SLEEP_S))

    async def _last_recorded(self, key: Key, schedule: Schedule) -> int | None:
        """The newest tick submitted of this same schedule (before this node started)."""
        try:
            record, _ = await _read(self.host.assets.schedules, key)
        except Exception:
            log.warning("cannot read the last tick of %s.%s", *key, exc_info=True)
            return None
        if record is None or record.schedule != schedule.as_record():
            return None
        return record.tick_ms

    async def _fire(self, key: Key, schedule: Schedule, due: int) -> None:
        """Submit one tick, trying until the next one is due; then it is missed."""

        def retrying(error: BaseException, failures: int) -> None:
            log.debug("submitting a tick of %s.%s failed; retrying", *key, exc_info=error)

        within_s = max(0.0, (schedule.next_after(due) - now_ms()) / 1000)
        try:
            await retry(
                lambda: self._submit(key, schedule, due),
                backoff=SUBMIT_RETRY,
                within_s=within_s,
                on_failure=retrying,
            )
        except Exception as exc:
            log.warning("⏰ %s.%s: missed the tick due at %d: %s", *key, due, exc)

    async def _submit(self, key: Key, schedule: Schedule, due: int) -> None:
        kv = self.host.assets.schedules
        record, revision = await _read(kv, key)
        if record is not None and record.tick_ms >= due:
            return  # another node submitted it (or a later one)
        scheduled = self._wanted.get(key)
        if scheduled is None or scheduled.schedule != schedule:
            return  # stopped meanwhile
        inv = self._invocation(scheduled, due)
        await self._open_class(inv)
        # Recorded as issued first, as clients do, so the gateway can find and cancel it.
        await issued.record(self.host.assets.issued, inv.id, 0)
        await publish_atomic(self.host.nc, [work_message(inv, inv.id, [inv.encode()])])
        run = protocol.ScheduleRun(
            app=inv.app,
            fn=inv.fn,
            schedule=schedule.as_record(),
            tick_ms=due,
            id=inv.id,
            digest=inv.digest,
            node=self.host.node_id,
            submitted=time.time(),
        )
        try:
            if revision is None:
                await kv.create(protocol.schedule_key(*key), run.as_json())
            else:
                await kv.update(protocol.schedule_key(*key), run.as_json(), last=revision)
        except KeyWrongLastSequenceError:
            return  # another node recorded this tick first
        log.info("⏰ %s.%s %s (version %s)", inv.app, inv.fn, inv.id, inv.digest[:12])

    def _invocation(self, scheduled: Scheduled, due: int) -> protocol.Invocation:
        version = scheduled.version
        spec = version.functions[scheduled.fn]
        options = spec.get("options") or {}
        retry_on = options.get("retry_on")
        pins = self._registry.pins.get(scheduled.app, {}) if self._registry else {}
        return protocol.Invocation(
            id=protocol.schedule_invocation_id(scheduled.app, scheduled.fn, due),
            app=scheduled.app,
            fn=scheduled.fn,
            digest=version.digest,
            env=version.env,
            module=spec["module"],
            qualname=spec["qualname"],
            args=protocol.Payload(
                codec=protocol.CODEC_PICKLE, data=NO_ARGUMENTS, size=len(NO_ARGUMENTS)
            ),
            deadline=time.time() + protocol.RESULT_TTL_S,
            retries=int(options.get("retries", 0) or 0),
            retry_on=[str(n) for n in retry_on] if isinstance(retry_on, list | tuple) else None,
            needs=call_needs(options, None, None, pins.get(scheduled.fn)) or None,
            settings=recorded_settings(options),
        )

    async def _open_class(self, inv: protocol.Invocation) -> None:
        """A function with needs: its class's consumer exists and nodes know of it."""
        if not inv.needs or self._registry is None:
            return
        cls = protocol.needs_class(inv.needs)
        if cls not in self._placed:
            nc = self.host.nc
            await ensure_work_consumer(
                nc, protocol.placed_consumer(cls), protocol.placed_filter(cls)
            )
            await self._registry.record_placement(cls, inv.needs)
            self._placed.add(cls)


def _latest_versions(registry: Registry) -> list[protocol.Version]:
    found = []
    for app in sorted(registry.aliases):
        try:
            found.append(registry.version(app, LATEST))
        except UserError:  # no latest (yet), or it names a version not mirrored yet
            continue
    return found


async def _read(kv: KeyValue, key: Key) -> tuple[protocol.ScheduleRun | None, int | None]:
    """The schedule's record and its revision (for compare-and-set); (None, None) if none."""
    try:
        entry = await kv.get(protocol.schedule_key(*key))
    except KeyNotFoundError:
        return None, None
    if not entry.value:
        return None, entry.revision
    try:
        return protocol.ScheduleRun.from_json(entry.value), entry.revision
    except protocol.ProtocolError:
        log.warning("overwriting an unreadable record of %s.%s", *key)
        return None, entry.revision
