"""What a node says about itself: its entry in the nodes bucket, rewritten every
heartbeat (sooner when its warm set changes), and its answer to control requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg

from superpose import protocol
from superpose.node.link import Link
from superpose.support.retry import THROUGH_ELECTION, retry

log = logging.getLogger("superpose.node")
WARM_ANNOUNCE_S = 0.02
"""A burst of loads and evictions is announced in one update."""
BEAT_RETRY = THROUGH_ELECTION
"""After a failed beat. The nodes bucket's stream has no leader for the 4-9 s NATS's
Raft takes to elect one after its server dies; the node's entry expires
NODE_TTL_S after its last stored beat, so the first beat the new leader can take
must not wait for the next heartbeat interval."""
BEAT_TIMEOUT_S = 2.0
"""One beat's wait for its acknowledgement: a beat sent to a server as it died is
never answered, and nats-py's own 5 s would eat half the TTL."""


class Heartbeat:
    def __init__(
        self,
        link: Link,
        info: Callable[[], protocol.NodeInfo],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.link = link
        self.info = info
        self._spawn = spawn
        self._warm_news = False

    async def beat(self) -> None:
        await self.link.assets.nodes.put(self.link.node_id, self.info().encode())

    async def beat_forever(self) -> None:
        while True:
            await asyncio.sleep(protocol.NODE_HEARTBEAT_S)
            await retry(self._beat_in_time, backoff=BEAT_RETRY, on_failure=_beat_failed)

    async def _beat_in_time(self) -> None:
        await asyncio.wait_for(self.beat(), BEAT_TIMEOUT_S)

    def warm_changed(self) -> None:
        """Publish the new warm set now, not at the next heartbeat: warm affinity on
        other nodes reads it, and a stale set sends them calls this node cannot take warm."""
        if not self._warm_news:
            self._warm_news = True
            self._spawn(self._announce_warm())

    async def _announce_warm(self) -> None:
        await asyncio.sleep(WARM_ANNOUNCE_S)
        self._warm_news = False
        try:
            await self.beat()
        except Exception:
            log.debug("could not announce the warm set", exc_info=True)

    async def on_control(self, msg: Msg) -> None:
        """Any request on the node's control subject gets its ``NodeInfo`` (readiness checks)."""
        if msg.reply:
            await self.link.nc.publish(msg.reply, self.info().encode())


def _beat_failed(error: BaseException, failures: int) -> None:
    if failures == 1:  # once per outage: a leader election fails ~20 tries
        log.warning("heartbeat failed; retrying", exc_info=error)
