"""Where a call with needs runs, chosen by the caller (see "Routing and placement" in
docs/architecture.md).

Calls without needs go to the queue group and never come here. A direct call
with needs is sent to one node that meets them, chosen from a mirror of the
nodes bucket; durable work with needs goes to its needs class's subject, which
only nodes meeting the needs pull from.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from superpose import protocol
from superpose.client.options import Options
from superpose.lattice.connection import ensure_work_consumer
from superpose.registry.mirror import Registry, Target
from superpose.registry.placement import NodeDirectory, call_needs, choose, env_needs


class Pins(Protocol):
    """The registry as placement needs it: pins, and where needs classes are recorded."""

    def pin(self, app: str, fn: str) -> str | None: ...

    def environment(self, digest: str) -> protocol.Environment | None: ...

    async def registry(self) -> Registry: ...


class Placement:
    def __init__(self, nc: NATS, nodes: KeyValue, names: Pins) -> None:
        self._nc = nc
        self._kv = nodes
        self._names = names
        self._directory: NodeDirectory | None = None
        self._sent_to: Counter[str] = Counter()
        """Placed direct calls sent to each node and not yet answered."""
        self._placed_classes: set[str] = set()
        """Needs classes whose consumer this client has made sure of."""

    async def nodes(self) -> NodeDirectory:
        """The live nodes, mirrored; started on first use (calls with needs or pins)."""
        if self._directory is None:
            self._directory = NodeDirectory(self._kv)
            await self._directory.start()
        return self._directory

    async def stop(self) -> None:
        if self._directory is not None:
            await self._directory.stop()

    def needs(
        self, target: Target, options: Options, *, durable: bool = False
    ) -> dict[str, str] | None:
        """What a node must offer to run this call (a pin is the need ``node=<id>``).

        Durable work with an environment also needs a node that can host it (its Python
        and platform): queued work is pulled by whichever node asks first, and a node
        that cannot host it must not take it. (A direct call that reaches such a node is
        sent on by the node itself, so direct calls keep their queue group and express
        path.)"""
        pin = self._names.pin(target.app, target.fn)
        needs = call_needs(target.options, options.needs, options.region, pin)
        env = self._names.environment(target.env) if durable and target.env else None
        if env is not None:
            needs.update(env_needs(env))
        return needs or None

    async def node_for(self, inv: protocol.Invocation, wait_s: float) -> str:
        """The node a direct call goes to; counted as busier until ``answered``."""
        warm = inv.host  # what nodes list as warm
        node = choose(await self._candidates(inv, wait_s), warm, self._sent_to)
        self._sent_to[node.id] += 1
        return node.id

    def answered(self, node_id: str) -> None:
        if self._sent_to[node_id] > 0:
            self._sent_to[node_id] -= 1

    async def open_class(self, inv: protocol.Invocation, wait_s: float) -> None:
        """Get durable work with needs ready to publish: a node meeting them is alive
        (fail now if not), and its class's consumer exists and is recorded, so those
        nodes pull from it."""
        await self._candidates(inv, wait_s)
        assert inv.needs is not None
        cls = protocol.needs_class(inv.needs)
        if cls not in self._placed_classes:
            await ensure_work_consumer(
                self._nc, protocol.placed_consumer(cls), protocol.placed_filter(cls)
            )
            await (await self._names.registry()).record_placement(cls, inv.needs)
            self._placed_classes.add(cls)

    async def _candidates(self, inv: protocol.Invocation, wait_s: float) -> list[protocol.NodeInfo]:
        directory = await self.nodes()
        assert inv.needs is not None
        return await directory.wait_for(inv.needs, wait_s, f"{inv.app}.{inv.fn}")
