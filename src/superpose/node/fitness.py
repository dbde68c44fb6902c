"""Fitness before work: a call whose environment this node cannot host (another Python,
another platform, no disk to spare) goes to a node that can, or fails at once naming
why, instead of waiting out its timeout.

Only calls this node would load cold are looked at (a warm host fits by definition),
and the environment's record is read once, so warm calls pay nothing.
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from superpose import protocol
from superpose.node.calls import CallTracker
from superpose.node.environments import Environments, packages_line
from superpose.node.executor_process import LoadFailed
from superpose.node.link import Link
from superpose.node.pool import ExecutorPool
from superpose.registry.placement import NodeDirectory, choose, fresh, hosts_env

log = logging.getLogger("superpose.node")


class Fitness:
    def __init__(
        self, link: Link, pool: ExecutorPool, envs: Environments, calls: CallTracker
    ) -> None:
        self.link = link
        self.pool = pool
        self.envs = envs
        self.calls = calls
        self.directory: NodeDirectory | None = None
        """The live nodes (set once the node is connected): where an unfit call goes."""

    async def refused(self, inv: protocol.Invocation, msg: Msg, *, may_forward: bool) -> bool:
        """True if this node does not take the call: it sent it to a node that can host
        its environment (calls from the queue group), or answered it with why none can."""
        if not inv.env or self.pool.hosted(inv) is not None:
            return False
        try:
            env = await self.envs.record(inv.env, inv)
        except LoadFailed as exc:
            await self._refuse(msg, inv, exc.error)
            return True
        why = self.envs.unfit(env)
        if why is None:
            return False
        log.info(
            "↷ %s.%s %s: cannot host environment %s: %s", inv.app, inv.fn, inv.id, inv.env[:12], why
        )
        node = self._fitting_node(inv, env) if may_forward else None
        if node is not None:
            subject = protocol.node_call_subject(node.id, inv.app, inv.fn)
            await self.link.nc.publish(subject, msg.data, reply=msg.reply or "")
            return True
        message = (
            f"{inv.app}.{inv.fn} cannot run: its environment {env.digest[:12]} "
            f"({packages_line(env)}) is resolved for Python {env.python} on {env.platform}, "
            f"and no live node can host it (here, node {self.link.node_id}: {why}; "
            f"nodes: {self._offered()})"
        )
        await self._refuse(
            msg, inv, protocol.ErrorInfo(protocol.ERR_PREPARE, "EnvironmentUnfit", message)
        )
        return True

    async def _refuse(self, msg: Msg, inv: protocol.Invocation, error: protocol.ErrorInfo) -> None:
        await self.calls.reply_error(msg.reply or "", inv.id, error.kind, error.type, error.message)

    def _fitting_node(
        self, inv: protocol.Invocation, env: protocol.Environment
    ) -> protocol.NodeInfo | None:
        live = fresh(self.directory.live()) if self.directory is not None else []
        fits = [n for n in live if n.id != self.link.node_id and hosts_env(n, env)]
        return choose(fits, inv.host, {}) if fits else None

    def _offered(self) -> str:
        live = fresh(self.directory.live()) if self.directory is not None else []
        return ", ".join(f"{n.id} Python {n.python} on {n.platform}" for n in live) or "none"
