"""Where calls enter a node: the queue group, calls addressed to this node, and
express calls its warm executors took straight from clients.

Each call is decoded, refused if its caller has given up, maybe handed to a node
holding its bundle warm, sent on if this node cannot host its environment, held
(reported to its caller until it ends), and given to admission.
"""

from __future__ import annotations

from nats.aio.msg import Msg

from superpose import protocol
from superpose.node.admission import Admission
from superpose.node.affinity import Affinity
from superpose.node.calls import CallTracker
from superpose.node.config import NodeConfig
from superpose.node.executor_process import ExecutorProcess
from superpose.node.fitness import Fitness
from superpose.node.hosts import BundleHost
from superpose.node.pool import ExecutorPool
from superpose.node.progress import HeldCalls


class Intake:
    def __init__(
        self,
        config: NodeConfig,
        pool: ExecutorPool,
        admission: Admission,
        calls: CallTracker,
        held: HeldCalls,
        affinity: Affinity,
        fitness: Fitness,
    ) -> None:
        self.config = config
        self.pool = pool
        self.admission = admission
        self.calls = calls
        self.held = held
        self.affinity = affinity
        self.fitness = fitness
        self.express_calls = 0
        """Calls a client sent straight to one of this node's warm executors."""

    async def on_call(self, msg: Msg) -> None:
        """A call from the queue group: any node may serve it, ideally one holding it warm."""
        await self._take(msg, may_forward=self.config.affinity)

    async def on_placed_call(self, msg: Msg) -> None:
        """A call sent to this node by name (its needs, a pin, or warm affinity)."""
        await self._take(msg, may_forward=False)

    async def _take(self, msg: Msg, *, may_forward: bool) -> None:
        reply = msg.reply or ""
        try:
            inv = protocol.Invocation.decode(msg.data)
        except protocol.ProtocolError as exc:
            await self.calls.reply_error(
                reply, "?", protocol.ERR_BAD_REQUEST, "BadInvocation", str(exc)
            )
            return
        sender = (msg.headers or {}).get(protocol.FORWARDED_BY_HEADER)
        if sender:  # handed over by another node: it counts the call until we report it
            self.affinity.received(inv.id, sender)
        if inv.remaining_s() <= 0:  # the caller has given up: running it would be wasted work
            self.affinity.forward_ended(inv.id)
            await self.calls.reply_error(
                reply,
                inv.id,
                protocol.ERR_TIMEOUT,
                "DeadlineExceeded",
                f"{inv.app}.{inv.fn} reached a node after its caller's deadline",
            )
            return
        if may_forward and self.pool.hosted(inv) is None and self.affinity.forward(inv, msg):
            return
        if await self.fitness.refused(inv, msg, may_forward=may_forward):
            self.affinity.forward_ended(inv.id)
            return
        self.held.hold(inv, reply)
        self.admission.accept(inv, msg)

    def adopt(self, host: BundleHost, executor: ExecutorProcess, took: protocol.Took) -> None:
        """An executor took a call a client sent it directly: account for it as if this
        node had sent it (slot, timeout, memory, progress, span). The slot is taken
        even if none is free; the executor only takes a call when it is idle."""
        reply = took.reply or ""
        inv = protocol.Invocation.decode(took.inv)
        meta = host.known.get((inv.module, inv.qualname), {})
        pool = self.admission.pool_for(host, inv, meta)
        pool.take()
        self.held.hold(inv, reply)
        self.pool.touch(host.key)
        self.express_calls += 1
        executor.adopt(self.calls.track(host, executor, inv, reply, meta, pool), started=True)
