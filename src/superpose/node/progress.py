"""The calls a node holds, reported to their callers every second.

A caller that hears nothing of a call for ``LOST_AFTER_S`` concludes its node
died and retries or fails it; these reports are how a live node says "still
mine" for calls that wait in its queue or run for a long time.
"""

from __future__ import annotations

import asyncio
import logging
import time

from superpose import protocol
from superpose.node.link import Link

log = logging.getLogger("superpose.node")


class HeldCalls:
    def __init__(self, link: Link) -> None:
        self.link = link
        self.held: dict[str, tuple[str, float, float]] = {}
        """id → (client, since, deadline) of each call held, queued or running."""

    def hold(self, inv: protocol.Invocation, reply: str) -> None:
        """Report this call to its client until it is released (calls without a
        client's reply subject, durable items, need no report)."""
        client = protocol.client_of_reply(reply)
        if client is not None:
            self.held[inv.id] = (client, time.monotonic(), inv.deadline)

    def release(self, inv_id: str) -> None:
        self.held.pop(inv_id, None)

    async def report_forever(self) -> None:
        """Every second, tell each client which of its calls this node still holds."""
        while True:
            await asyncio.sleep(protocol.PROGRESS_INTERVAL_S)
            try:
                await self._report(self._due())
            except Exception:
                log.warning("progress report failed; will retry", exc_info=True)

    def _due(self) -> dict[str, list[str]]:
        """Calls held at least a second, by client; calls past their deadline are dropped
        (their callers have stopped waiting)."""
        by_client: dict[str, list[str]] = {}
        now, wall = time.monotonic(), time.time()
        for inv_id, (client, since, deadline) in list(self.held.items()):
            if wall > deadline:
                del self.held[inv_id]
            elif now - since >= protocol.PROGRESS_INTERVAL_S:
                by_client.setdefault(client, []).append(inv_id)
        return by_client

    async def _report(self, by_client: dict[str, list[str]]) -> None:
        for client, ids in by_client.items():
            for start in range(0, len(ids), protocol.PROGRESS_MAX_IDS):
                batch = ids[start : start + protocol.PROGRESS_MAX_IDS]
                await self.link.nc.publish(
                    protocol.progress_subject(client),
                    protocol.Progress(self.link.node_id, batch).encode(),
                )
