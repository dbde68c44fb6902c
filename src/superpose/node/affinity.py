"""Warm affinity: a call this node would load cold goes to a node holding it warm.

One hop at most (the receiver never forwards). "Room" means fewer than two calls
per slot handed over and not yet reported done, so a hot bundle spills onto this
node instead of piling up on one. (Heartbeat load figures are too stale for this:
a node loading a bundle looks busy for the whole load.) The receiver reports
each handed-over call's end, so the sender knows what is outstanding there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg

from superpose import protocol
from superpose.node.link import Link
from superpose.node.pool import ExecutorPool
from superpose.registry.placement import NodeDirectory, fresh

log = logging.getLogger("superpose.node")
FORWARDS_PER_SLOT = 2
"""Calls handed to a warm node per slot of it, outstanding, before this node loads the
bundle itself (a done report can trail the caller's next call)."""
FORWARD_FORGET_S = 60.0
"""A handed-over call never reported done (its node died) stops counting after this."""


class Affinity:
    def __init__(
        self,
        link: Link,
        pool: ExecutorPool,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.link = link
        self.pool = pool
        self._spawn = spawn
        self.directory: NodeDirectory | None = None
        """The live nodes and what they hold warm; set once the node is connected."""
        self._forwards: dict[str, dict[str, float]] = {}
        """Calls handed to other nodes and not yet reported done: node → {id: when}."""
        self._forwarded_from: dict[str, str] = {}
        """Calls other nodes handed to this one: id → the node to tell when it ends."""

    def received(self, inv_id: str, sender: str) -> None:
        """Another node handed us this call: it counts it until we report its end."""
        self._forwarded_from[inv_id] = sender

    def forward(self, inv: protocol.Invocation, msg: Msg) -> bool:
        """Hand the call to a warm node with room, if there is one; and while this node
        has room too, warm the bundle here, off the caller's path."""
        node = self._warm_node_with_room(inv.host)
        if node is None:
            return False
        self._forwards[node.id][inv.id] = time.monotonic()
        subject = protocol.node_call_subject(node.id, inv.app, inv.fn)
        headers = {protocol.FORWARDED_BY_HEADER: self.link.node_id}
        nc = self.link.nc
        self._spawn(nc.publish(subject, msg.data, reply=msg.reply or "", headers=headers))
        if not self.pool.full():
            self._spawn(self._warm_up(inv))
        return True

    def _warm_node_with_room(self, key: str) -> protocol.NodeInfo | None:
        """The warm node with the fewest of our calls outstanding, under its share."""
        assert self.directory is not None, "affinity starts once the node is connected"
        now = time.monotonic()
        best: tuple[int, protocol.NodeInfo] | None = None
        for node in fresh(self.directory.live()):
            if node.id == self.link.node_id or key not in node.warm:
                continue
            outstanding = self._forwards.setdefault(node.id, {})
            for inv_id, since in list(outstanding.items()):
                if now - since > FORWARD_FORGET_S:
                    del outstanding[inv_id]
            room = len(outstanding) < FORWARDS_PER_SLOT * node.slots
            if room and (best is None or len(outstanding) < best[0]):
                best = (len(outstanding), node)
        return best[1] if best is not None else None

    async def _warm_up(self, inv: protocol.Invocation) -> None:
        """Load a bundle another node served for us, so its next calls run here warm.

        Only while this node has room: a full node keeps handing the bundle's calls
        over instead of evicting one of its own, and the lattice as a whole keeps
        more bundles warm than any one node can.
        """
        try:
            host = await self.pool.host(inv)
            await self.pool.describe(host, inv)
        except Exception:  # the call itself was served elsewhere; the next one retries
            log.debug("could not warm %s up", inv.digest[:12], exc_info=True)

    async def on_forward_done(self, msg: Msg) -> None:
        try:
            done = protocol.ForwardDone.decode(msg.data)
        except protocol.ProtocolError:
            return  # not from a node: nothing to count
        self._forwards.get(done.node, {}).pop(done.id, None)

    def forward_ended(self, inv_id: str) -> None:
        """Tell the node that handed us this call that it ended."""
        sender = self._forwarded_from.pop(inv_id, None)
        if sender is not None:
            done = protocol.ForwardDone(self.link.node_id, inv_id).encode()
            self._spawn(self.link.nc.publish(protocol.forward_done_subject(sender), done))
