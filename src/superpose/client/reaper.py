"""Every wait on a direct call has an end.

A call past its deadline fails with a timeout. A call no node has reported for
``protocol.LOST_AFTER_S`` was held by a node that died or lost the lattice: it
is retried or failed. Nodes report the calls they hold once a second; when this
client's own loop stalls, their reports may sit unread, so a stall is never
taken for the nodes' silence.

When this client's connection reconnects (its server died), an answer published
meanwhile is gone for good (core NATS is at most once): a call no node has reported
since is taken for lost after ``LOST_AFTER_RECONNECT_S``, not the full period.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from nats.aio.msg import Msg

from superpose import protocol
from superpose.client.reconnects import Reconnects
from superpose.errors import CallTimeoutError, RemoteError, SuperposeError

if TYPE_CHECKING:
    from superpose.client.direct import Call

REAP_INTERVAL_S = 0.25
LOST_SCAN_EVERY = 4
"""Reaper ticks between scans for calls whose node went silent (once a second)."""
LOST_AFTER_RECONNECT_S = 3.0
"""After a reconnect, how long a call may go unreported before it is taken for lost: a
node holding it reports it within two of its one-second rounds (a call is reported
once held a second), and one round more is the margin."""


class Watched(Protocol):
    """The direct calls in flight, as the reaper needs them."""

    @property
    def calls(self) -> Mapping[str, Call]: ...

    def fail(self, call: Call, error: SuperposeError) -> None: ...

    async def retry_or_fail(self, call: Call, error: SuperposeError) -> None: ...


class Reaper:
    def __init__(self, watched: Watched, reconnects: Reconnects) -> None:
        self._watched = watched
        self._reconnects = reconnects
        self._reconnected = -math.inf
        """When this client's connection last reconnected (monotonic)."""
        self._deadlines: list[tuple[float, str]] = []

    def watch(self, inv: protocol.Invocation) -> None:
        """Fail this call if it has no answer by its deadline."""
        heapq.heappush(self._deadlines, (inv.deadline, inv.id))

    async def on_progress(self, msg: Msg) -> None:
        """A node's report of the calls it holds: they are not lost."""
        try:
            progress = protocol.Progress.decode(msg.data)
        except protocol.ProtocolError:
            return
        now = time.monotonic()
        calls = self._watched.calls
        for inv_id in progress.ids:
            call = calls.get(inv_id)
            if call is not None:
                call.heard, call.node = now, progress.node

    async def run(self) -> None:
        ticks, last = 0, time.monotonic()
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            ticks += 1
            lag = time.monotonic() - last - REAP_INTERVAL_S
            last = time.monotonic()
            if self._reconnects.happened():
                self._reconnected = last
            if lag > REAP_INTERVAL_S:  # this loop stalled: nodes' reports may still be unread
                for call in self._watched.calls.values():
                    call.heard += lag
            elif ticks % LOST_SCAN_EVERY == 0:
                self._find_lost()
            self._expire(time.time())

    def _find_lost(self) -> None:
        now = time.monotonic()
        for call in list(self._watched.calls.values()):
            silence = None if call.placing else self._silence(call, now)
            if silence is not None:
                call.heard = now  # one verdict per silence, even while a retry is pending
                self._lost(call, silence)

    def _silence(self, call: Call, now: float) -> str | None:
        """Why the call counts as lost, if it does."""
        if now - call.heard > protocol.LOST_AFTER_S:
            return f"for {protocol.LOST_AFTER_S:g} s: the node died or lost the lattice"
        since = self._reconnected
        if call.heard < since and now - since > LOST_AFTER_RECONNECT_S:
            return "since this client reconnected: its answer may have been lost with the server"
        return None

    def _lost(self, call: Call, silence: str) -> None:
        inv = call.inv
        where = f"node {call.node}" if call.node else "the node that took it"
        error = RemoteError(
            protocol.ERR_CRASHED,
            "NodeLost",
            f"{where} stopped reporting {inv.app}.{inv.fn} ({inv.id}) {silence}",
            node=call.node,
        )
        asyncio.get_running_loop().create_task(self._watched.retry_or_fail(call, error))

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] < now:
            _, inv_id = heapq.heappop(self._deadlines)
            call = self._watched.calls.get(inv_id)
            if call is not None:
                self._watched.fail(
                    call,
                    CallTimeoutError(
                        f"{call.inv.app}.{call.inv.fn} ({inv_id}) got no answer "
                        "before its deadline; the node serving it may have died"
                    ),
                )
