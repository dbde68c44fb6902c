"""The node agent: a generic node that becomes whatever function a request asks for.

It takes invocations from the ``sp.call.>`` queue group (NATS balances the
lattice, no scheduler), fetches and verifies the bundle on first sight, hands
the call to a warm executor for that bundle, and enforces the call's timeout
and memory limit. It never imports user code.

The agent itself only composes and routes: ``Intake`` takes calls in,
``Admission`` decides when they run, ``ExecutorPool`` holds the executors,
``CallTracker`` follows each call to its end, ``Affinity`` hands cold calls to
warm nodes, ``HeldCalls`` and ``Heartbeat`` tell callers and the lattice what
the node is doing, ``DurableWorker`` runs durable work from JetStream, and
``Scheduler`` submits the due ticks of scheduled functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Coroutine
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from superpose import protocol
from superpose.lattice import secrets, shm
from superpose.lattice.connection import Assets, connect, ensure_assets
from superpose.node.admission import Admission, Request
from superpose.node.affinity import Affinity
from superpose.node.calls import CallTracker
from superpose.node.code_trust import CodeTrust
from superpose.node.config import NodeConfig
from superpose.node.durable import DurableWorker
from superpose.node.env_cache import EnvCache
from superpose.node.environments import Environments
from superpose.node.executor_process import Call, ExecutorProcess
from superpose.node.fitness import Fitness
from superpose.node.fork import ForkedChild
from superpose.node.heartbeat import Heartbeat
from superpose.node.hosts import BundleHost
from superpose.node.intake import Intake
from superpose.node.link import Link
from superpose.node.placing import PlaceAnswers
from superpose.node.pool import ExecutorPool
from superpose.node.prefetch import AliasPrefetcher
from superpose.node.progress import HeldCalls
from superpose.node.sandbox import Confinement
from superpose.node.scheduler import Scheduler
from superpose.registry import asked
from superpose.registry.mirror import Registry
from superpose.registry.placement import NodeDirectory, satisfies
from superpose.registry.trust import TrustedKeys

log = logging.getLogger("superpose.node")
SHUTDOWN_STEP_S = 2.0


class NodeAgent:
    def __init__(
        self, config: NodeConfig, forked: tuple[ForkedChild, socket.socket] | None = None
    ) -> None:
        self.config = config
        self.started = time.time()
        self.link = Link(config.node_id)
        self._tasks: set[asyncio.Task[None]] = set()
        self._subs: list[Subscription] = []
        confinement = Confinement.for_node(
            config.sandbox, config.state_dir, config.node_id, config.lattice
        )
        cache_root = confinement.root if confinement else config.state_dir
        self.envs = Environments(
            self.link, EnvCache(cache_root / "envs", config.env_cache_bytes), self.spawn
        )
        self.pool = ExecutorPool(config, self, self.spawn, self.envs, forked, confinement)
        self.pool.read_secrets = self._read_secrets
        self.admission = Admission(config, self.pool, self.spawn)
        self.held = HeldCalls(self.link)
        self.affinity = Affinity(self.link, self.pool, self.spawn)
        self.durable = DurableWorker(self)
        self.calls = CallTracker(
            self.link, self.held, self.admission, self.affinity, self.durable, self.spawn
        )
        self.admission.wire(self.calls, self.durable)
        self.fitness = Fitness(self.link, self.pool, self.envs, self.calls)
        self.intake = Intake(
            config, self.pool, self.admission, self.calls, self.held, self.affinity, self.fitness
        )
        self.heartbeat = Heartbeat(self.link, self.info, self.spawn)
        self.scheduler = Scheduler(self.link)
        self._watches: list[Scheduler | Registry | NodeDirectory | AliasPrefetcher] = []
        self._registry: Registry | None = None

    # --- lifecycle -------------------------------------------------------------

    async def _on_resolve(self, msg: Msg) -> None:
        """Which version a name resolves to, asked by an executor (``registry/asked.py``)."""
        if self._registry is None or not msg.reply:
            return
        try:
            request = protocol.ResolveRequest.decode(msg.data)
        except protocol.ProtocolError as exc:
            answer = protocol.Resolved(error_kind="bad_request", error=str(exc))
        else:
            answer = asked.answer(self._registry, request)
        with contextlib.suppress(Exception):  # the asker gone: nothing to tell
            await msg.respond(answer.encode())

    async def _read_secrets(self, names: list[str]) -> dict[str, str]:
        """For executors, whose own NATS users may not read the secrets bucket."""
        return await secrets.read(self.link.assets.secrets, names)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain in-flight calls for the grace period."""
        try:
            await self.start()
            await stop.wait()
        finally:  # also after a failed start: its spare executor is already starting
            await self.shutdown()

    async def start(self) -> None:
        self.pool.start_spare()  # first: its start overlaps our own set-up
        self.envs.open()
        shm.sweep_all()  # offers of executors that died with an earlier node
        nc = await connect(self.config.lattice, name=f"superpose-node-{self.config.node_id}")
        self.link.connected(nc)
        self.link.assets_found(await ensure_assets(nc))
        self.pool.nc = nc
        self.trust = TrustedKeys(self.link.assets.trust)
        self.pool.code_trust = CodeTrust(self.trust)
        await self._subscribe_calls()
        await self._watch_lattice()
        await self.durable.start()
        await self.pool.spare_ready()
        self._subs.append(  # what readiness checks answer
            await nc.subscribe(
                protocol.node_control_subject(self.config.node_id), cb=self.heartbeat.on_control
            )
        )
        await self.heartbeat.beat()
        for forever in (
            self.heartbeat.beat_forever(),
            self.calls.call_log.run(),
            self.held.report_forever(),
        ):
            self.spawn(forever)
        log.info(
            "node %s serving %s with %d slot(s)",
            self.config.node_id,
            self.config.lattice,
            self.config.slots,
        )

    async def _subscribe_calls(self) -> None:
        nc = self.link.nc
        unbounded: dict[str, Any] = {"pending_msgs_limit": -1, "pending_bytes_limit": -1}
        self._subs += [
            await nc.subscribe(
                protocol.CALL_WILDCARD,
                queue=protocol.CALL_QUEUE_GROUP,
                cb=self.intake.on_call,
                **unbounded,
            ),
            await nc.subscribe(
                protocol.node_call_wildcard(self.config.node_id),
                cb=self.intake.on_placed_call,
                **unbounded,
            ),
            await nc.subscribe(
                protocol.forward_done_subject(self.config.node_id),
                cb=self.affinity.on_forward_done,
            ),
        ]

    async def _watch_lattice(self) -> None:
        """Mirrors of the nodes bucket (warm affinity) and the registry (needs classes,
        schedules), and alias moves (bundles prefetched before their first call)."""
        directory = NodeDirectory(self.link.assets.nodes)
        await directory.start()
        self.affinity.directory = directory
        self.fitness.directory = directory
        # Set before it starts: its first entries already call _on_registry_change.
        self._registry = Registry(
            self.link.assets.registry, on_change=self._on_registry_change, trust=self.trust
        )
        await self._registry.start()
        prefetcher = AliasPrefetcher(self.link.nc, self.pool.prefetch)
        await prefetcher.start()
        await self.scheduler.start(self._registry)
        self._watches = [self.scheduler, prefetcher, directory, self._registry]
        self._subs.append(  # executors' names: their own users may not read the registry
            await self.link.nc.subscribe(
                protocol.RESOLVE_SUBJECT,
                queue=protocol.CALL_QUEUE_GROUP,
                cb=self._on_resolve,
            )
        )
        placing = PlaceAnswers(self.link.nc, directory, self._registry, self.spawn)
        self._subs.append(  # executors' calls with needs (node/placing.py)
            await self.link.nc.subscribe(
                protocol.PLACE_SUBJECT, queue=protocol.CALL_QUEUE_GROUP, cb=placing.on_place
            )
        )

    async def shutdown(self) -> None:
        """Stop taking calls, drain, stop executors, leave. Never waits on a dead lattice."""
        for watch in self._watches:
            await _bounded(watch.stop(), "stop watching the lattice")
        for sub in self._subs:
            await _bounded(sub.unsubscribe(), "unsubscribe")
        self._subs.clear()
        await self.pool.quiet()
        await _bounded(self.durable.stop_pulling(), "stop pulling durable work")
        deadline = time.monotonic() + self.config.drain_grace_s
        while self._draining() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.close()
        if self.link.has_assets:
            await _bounded(self.link.assets.nodes.delete(self.config.node_id), "remove node entry")
        if self.link.is_connected:
            await _bounded(self.link.nc.close(), "close connection")
        self.calls.call_log.flush()
        log.info("node %s stopped", self.config.node_id)

    def _draining(self) -> bool:
        return bool(self.admission.busy or self.admission.queued or self.durable.busy())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task the node owns: cancelled at shutdown, never left unreferenced."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- what the node says of itself ----------------------------------------------

    def info(self) -> protocol.NodeInfo:
        return protocol.NodeInfo(
            id=self.config.node_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            labels=self.config.labels,
            slots=self.config.slots,
            busy=self.admission.busy,
            queued=self.admission.queued,
            warm=self.pool.warm(),
            started=self.started,
            seen=time.time(),
            served=self.calls.served,
            cold_loads=self.pool.cold_loads,
            express=self.intake.express_calls,
            traffic=dict(self.calls.traffic),
            python=self.envs.python,
            platform=self.envs.platform,
            envs=self.envs.built(),
            sandbox=self.config.sandbox,
        )

    def _on_registry_change(self, key: str) -> None:
        """A needs class appeared: pull its durable work if this node meets the needs.
        A version or alias changed: the schedules may have."""
        self.scheduler.registry_changed(key)
        kind, _, cls = key.partition(".")
        if kind != "place" or self._registry is None:
            return
        needs = self._registry.placements.get(cls)
        if needs is not None and satisfies(self.info(), needs):
            self.durable.add_source(protocol.placed_consumer(cls))

    # --- what the executor pool tells the node (PoolListener) -------------------------

    def on_block(self, call: Call) -> None:
        self.admission.on_block(call)

    def on_unblock(self, call: Call) -> None:
        self.admission.on_unblock(call)

    def on_took(self, host: BundleHost, executor: ExecutorProcess, took: protocol.Took) -> None:
        self.intake.adopt(host, executor, took)

    def on_result(self, data: bytes) -> None:
        self.durable.result_arrived(data)

    def warm_changed(self) -> None:
        self.heartbeat.warm_changed()

    # --- what the durable worker needs of the node (DurableHost) ----------------------

    @property
    def node_id(self) -> str:
        return self.config.node_id

    @property
    def nc(self) -> NATS:
        return self.link.nc

    @property
    def assets(self) -> Assets:
        return self.link.assets

    def accept(self, inv: protocol.Invocation, work: Request) -> None:
        self.admission.accept(inv, work)

    def has_room(self) -> bool:
        """Fewer calls wait here than the node can run at once."""
        return self.admission.queued < self.config.capacity()

    def cancel(self, inv_id: str) -> list[str]:
        return self.pool.cancel(inv_id)


async def _bounded(step: Coroutine[Any, Any, Any], what: str) -> None:
    """One shutdown step that talks to the lattice: it may be gone, so give up in time."""
    try:
        await asyncio.wait_for(step, SHUTDOWN_STEP_S)
    except Exception:
        log.debug("shutdown: could not %s", what, exc_info=True)
