"""The node agent: a generic node that becomes whatever function a request asks for.

It takes invocations from the ``sp.call.>`` queue group (NATS balances the
lattice, no scheduler), fetches and verifies the bundle on first sight, hands
the call to a warm executor for that bundle, and enforces the call's timeout
and memory limit. It never imports user code. Each invocation reads as phases:
decode → host the bundle → describe the function → take a slot → run →
report → release.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from superpose import protocol
from superpose.code import store
from superpose.config import (
    DEFAULT_TIMEOUT_S,
    affinity_from_env,
    express_from_env,
    max_executors_from_env,
)
from superpose.errors import CallTimeoutError, NotFoundError, SuperposeError
from superpose.lattice.connection import Assets, connect, ensure_assets
from superpose.node.call_log import CallLog
from superpose.node.durable import DurableWorker
from superpose.node.executor_process import (
    Call,
    ExecutorDied,
    ExecutorProcess,
    ForkedChild,
    LoadFailed,
)
from superpose.node.prefetch import AliasPrefetcher
from superpose.node.slots import SlotPool
from superpose.registry.mirror import Registry
from superpose.registry.placement import NodeDirectory, fresh, satisfies

log = logging.getLogger("superpose.node")
DEFAULT_ASYNC_CONCURRENCY = 100
FORWARDS_PER_SLOT = 2
"""Calls handed to a warm node per slot of it, outstanding, before this node loads the
bundle itself (a done report can trail the caller's next call)."""
WARM_ANNOUNCE_S = 0.02
FORWARD_FORGET_S = 60.0
"""A handed-over call never reported done (its node died) stops counting after this."""
SPARE_READY_S = 10.0


class Request(Protocol):
    """A call as the agent needs it: a direct call's NATS message, or a durable item."""

    data: bytes
    reply: str


@dataclass(kw_only=True)
class NodeConfig:
    lattice: str
    node_id: str
    state_dir: Path
    slots: int = 1
    """How many sync invocations run at once; an async function runs up to its
    ``concurrency`` (default 100) invocations per slot."""
    labels: dict[str, str] = field(default_factory=dict)
    pipeline_depth: int = 8
    """Sync calls sent ahead to an executor per slot, so it runs them back to back."""
    max_executors: int = field(default_factory=lambda: max_executors_from_env(8))
    """Warm executor processes kept; the least recently used idle one is evicted past this."""
    drain_grace_s: float = 10.0
    affinity: bool = field(default_factory=affinity_from_env)
    """Hand a call for a bundle this node lacks to a node holding it warm and idle."""
    express: bool = field(default_factory=express_from_env)
    """Warm executors take calls straight from clients (see executor_main)."""

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, got {self.slots}")
        if self.pipeline_depth < 1:
            raise ValueError(f"pipeline_depth must be at least 1, got {self.pipeline_depth}")
        if self.max_executors < 1:
            raise ValueError(f"max_executors must be at least 1, got {self.max_executors}")
        if not protocol.is_valid_name(self.node_id):
            raise ValueError(f"node id {self.node_id!r} must be letters, digits, _ and -")


@dataclass
class BundleHost:
    """The executors hosting one bundle on this node, and what they told us of its functions."""

    digest: str
    path: Path
    executors: list[ExecutorProcess] = field(default_factory=list)
    meta: dict[tuple[str, str], asyncio.Task[dict[str, Any]]] = field(default_factory=dict)
    """One describe per function, shared by every call that arrives while it runs."""
    known: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """Descriptions already received: the fast path reads them without awaiting."""
    async_limits: dict[tuple[str, str], SlotPool] = field(default_factory=dict)
    users: int = 0
    """Calls between arrival and completion; a host with users is never evicted."""

    def async_limit(self, key: tuple[str, str], meta: dict[str, Any], slots: int) -> SlotPool:
        limit = self.async_limits.get(key)
        if limit is None:
            per_slot = int(meta.get("concurrency") or DEFAULT_ASYNC_CONCURRENCY)
            limit = self.async_limits[key] = SlotPool(per_slot * slots)
        return limit


class NodeAgent:
    def __init__(
        self, config: NodeConfig, forked: tuple[ForkedChild, socket.socket] | None = None
    ) -> None:
        self.config = config
        self._forked = forked
        """A neutral executor forked before the event loop started: the first spare."""
        self.slots = SlotPool(config.slots * config.pipeline_depth)
        self.hosts: OrderedDict[str, BundleHost] = OrderedDict()
        self._host_locks: dict[str, asyncio.Lock] = {}
        self._spare: asyncio.Task[ExecutorProcess] | None = None
        self.busy = 0
        self.queued = 0
        self.call_log = CallLog()
        self.held: dict[str, tuple[str, float, float]] = {}
        """Calls this node holds (queued or running): id → (client, since, deadline).
        Reported to their clients every second, so a client notices when a node dies."""
        self.backlog: deque[tuple[protocol.Invocation, Request]] = deque()
        """Warm calls waiting for capacity, dispatched as calls finish."""
        self.served = 0
        self.started = time.time()
        self._nc: NATS | None = None
        self._assets: Assets | None = None
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._executor_log: IO[bytes] | None = None
        self.durable = DurableWorker(self)
        self._prefetcher: AliasPrefetcher | None = None
        self.directory: NodeDirectory | None = None
        self._registry: Registry | None = None
        self.cold_loads = 0
        self.express_calls = 0
        self.traffic: Counter[str] = Counter()
        self._forwards: dict[str, dict[str, float]] = {}
        """Calls handed to other nodes and not yet reported done: node → {id: when}."""
        self._warm_news = False
        self._forwarded_from: dict[str, str] = {}
        """Calls other nodes handed to this one: id → the node to tell when it ends."""

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "agent not started"
        return self._nc

    @property
    def assets(self) -> Assets | None:
        return self._assets

    def capacity(self) -> int:
        """Sync calls this node runs or has sent ahead at once."""
        return self.config.slots * self.config.pipeline_depth

    # --- lifecycle -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain in-flight calls for the grace period."""
        try:
            await self.start()
            await stop.wait()
        finally:  # also after a failed start: its spare executor is already starting
            await self.shutdown()

    async def start(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self._executor_log = open(self.config.state_dir / "executors.log", "ab")  # noqa: SIM115
        # First: its interpreter start and imports (~0.15 s) overlap our own set-up.
        self._spare = asyncio.create_task(self._first_spare())
        self._nc = await connect(self.config.lattice, name=f"superpose-node-{self.config.node_id}")
        self._assets = await ensure_assets(self._nc)
        self._subs.append(
            await self.nc.subscribe(
                protocol.CALL_WILDCARD,
                queue=protocol.CALL_QUEUE_GROUP,
                cb=self._on_call,
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )
        )
        self._subs.append(
            await self.nc.subscribe(
                protocol.node_call_wildcard(self.config.node_id),
                cb=self._on_placed_call,
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )
        )
        self._subs.append(
            await self.nc.subscribe(
                protocol.forward_done_subject(self.config.node_id), cb=self._on_forward_done
            )
        )
        self.directory = NodeDirectory(self._assets.nodes)
        await self.directory.start()
        self._registry = Registry(self._assets.registry, on_change=self._on_registry_change)
        await self._registry.start()
        self._prefetcher = AliasPrefetcher(self.nc, self._prefetch)
        await self._prefetcher.start()
        await self.durable.start(self._spawn)
        # Ready means ready: the first call after `up` must not pay for an executor start.
        await asyncio.wait({self._spare}, timeout=SPARE_READY_S)
        self._subs.append(  # what readiness checks answer
            await self.nc.subscribe(
                protocol.node_control_subject(self.config.node_id), cb=self._on_control
            )
        )
        await self._heartbeat_once()
        self._spawn(self._heartbeat())
        self._spawn(self.call_log.run())
        self._spawn(self._report_progress())
        log.info(
            "node %s serving %s with %d slot(s)",
            self.config.node_id,
            self.config.lattice,
            self.config.slots,
        )

    async def shutdown(self) -> None:
        """Stop taking calls, drain, stop executors, leave. Never waits on a dead lattice."""
        await self._stop_watching()
        for sub in self._subs:
            await _bounded(sub.unsubscribe(), "unsubscribe")
        self._subs.clear()
        await asyncio.gather(*(e.quiet() for h in self.hosts.values() for e in h.executors))
        await _bounded(self.durable.stop_pulling(), "stop pulling durable work")
        deadline = time.monotonic() + self.config.drain_grace_s
        while (self.busy or self.queued or self.durable.busy()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        executors = [e for h in self.hosts.values() for e in h.executors]
        if self._spare is not None:
            if not self._spare.done():
                self._spare.cancel()  # still starting: its process is killed on cancel
            spare = await asyncio.gather(self._spare, return_exceptions=True)
            executors += [e for e in spare if isinstance(e, ExecutorProcess)]
        await asyncio.gather(*(e.close() for e in executors), return_exceptions=True)
        if self._assets is not None:
            await _bounded(self._assets.nodes.delete(self.config.node_id), "remove node entry")
        if self._nc is not None:
            await _bounded(self._nc.close(), "close connection")
        if self._executor_log is not None:
            self._executor_log.close()
        self.call_log.flush()
        log.info("node %s stopped", self.config.node_id)

    async def _stop_watching(self) -> None:
        for watch in (self._prefetcher, self.directory, self._registry):
            if watch is not None:
                await _bounded(watch.stop(), "stop watching the lattice")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- heartbeat and control ---------------------------------------------------

    def info(self) -> protocol.NodeInfo:
        return protocol.NodeInfo(
            id=self.config.node_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            labels=self.config.labels,
            slots=self.config.slots,
            busy=self.busy,
            queued=self.queued,
            warm=list(self.hosts),
            started=self.started,
            seen=time.time(),
            served=self.served,
            cold_loads=self.cold_loads,
            express=self.express_calls,
            traffic=dict(self.traffic),
        )

    def _warm_changed(self) -> None:
        """Publish the new warm set now, not at the next heartbeat: warm affinity on
        other nodes reads it, and a stale set sends them calls this node cannot take warm."""
        if not self._warm_news:
            self._warm_news = True
            self._spawn(self._announce_warm())

    async def _announce_warm(self) -> None:
        await asyncio.sleep(WARM_ANNOUNCE_S)  # one update for a burst of loads and evictions
        self._warm_news = False
        try:
            await self._heartbeat_once()
        except Exception:
            log.debug("could not announce the warm set", exc_info=True)

    async def _heartbeat_once(self) -> None:
        assert self._assets is not None
        await self._assets.nodes.put(self.config.node_id, self.info().encode())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(protocol.NODE_HEARTBEAT_S)
            try:
                await self._heartbeat_once()
            except Exception:
                log.warning("heartbeat failed; will retry", exc_info=True)

    async def _report_progress(self) -> None:
        """Every second, tell each client which of its calls this node still holds."""
        while True:
            await asyncio.sleep(protocol.PROGRESS_INTERVAL_S)
            by_client: dict[str, list[str]] = {}
            now, wall = time.monotonic(), time.time()
            for inv_id, (client, since, deadline) in list(self.held.items()):
                if wall > deadline:  # its caller has stopped waiting
                    del self.held[inv_id]
                elif now - since >= protocol.PROGRESS_INTERVAL_S:
                    by_client.setdefault(client, []).append(inv_id)
            try:
                for client, ids in by_client.items():
                    for start in range(0, len(ids), protocol.PROGRESS_MAX_IDS):
                        batch = ids[start : start + protocol.PROGRESS_MAX_IDS]
                        await self.nc.publish(
                            protocol.progress_subject(client),
                            protocol.Progress(self.config.node_id, batch).encode(),
                        )
            except Exception:
                log.warning("progress report failed; will retry", exc_info=True)

    async def _on_control(self, msg: Msg) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, self.info().encode())

    # --- executors -------------------------------------------------------------

    async def _start_executor(self) -> ExecutorProcess:
        return await ExecutorProcess.start(
            self.config.lattice,
            self.config.node_id,
            on_block=self._on_block,
            on_unblock=self._on_unblock,
            log_file=self._executor_log,
        )

    async def _first_spare(self) -> ExecutorProcess:
        if self._forked is None:
            return await self._start_executor()
        (child, sock), self._forked = self._forked, None
        return await ExecutorProcess.take_over(
            child,
            sock,
            on_block=self._on_block,
            on_unblock=self._on_unblock,
            log_file=self._executor_log,
        )

    async def _fresh_executor(self) -> ExecutorProcess:
        """The pre-started neutral executor if there is one; a new spare starts behind it."""
        spare, self._spare = self._spare, asyncio.create_task(self._start_executor())
        if spare is not None:
            try:
                return await spare
            except Exception:
                log.warning("spare executor failed to start", exc_info=True)
        return await self._start_executor()

    def _on_block(self, call: Call) -> None:
        if call.holds_slot and call.is_sync:
            call.holds_slot = False
            self.slots.release()
            self._drain_backlog()
            self.durable.room()

    def _on_unblock(self, call: Call) -> None:
        if not call.holds_slot and call.is_sync:
            call.holds_slot = True
            self.slots.take()

    async def _host(self, inv: protocol.Invocation) -> BundleHost:
        host = self.hosts.get(inv.digest)
        if host is None:
            lock = self._host_locks.setdefault(inv.digest, asyncio.Lock())
            async with lock:
                host = self.hosts.get(inv.digest)
                if host is None:
                    path = await store.materialize(
                        self.nc, inv.digest, self.config.state_dir / "bundles"
                    )
                    host = BundleHost(inv.digest, path)
                    await self._add_executor(host, inv.app)
                    self.cold_loads += 1
                    self.hosts[inv.digest] = host
                    self._warm_changed()
                    log.info("⇣ bundle %s warm (%s)", inv.digest[:12], inv.app)
        self.hosts.move_to_end(inv.digest)
        return host

    async def _prefetch(self, digest: str) -> None:
        """Fetch a bundle an alias just moved to, so its first call here is not cold.

        Files only: an executor would hold memory for a version this node may
        never serve. The lock is ``_host``'s, so a call arriving mid-fetch waits
        for this fetch instead of starting a second one.
        """
        if digest in self.hosts:
            return
        async with self._host_locks.setdefault(digest, asyncio.Lock()):
            if digest not in self.hosts:
                await store.materialize(self.nc, digest, self.config.state_dir / "bundles")
                log.info("⇣ bundle %s prefetched", digest[:12])

    async def _add_executor(self, host: BundleHost, app: str) -> ExecutorProcess:
        self._evict_if_full(room_for=1)
        executor = await self._fresh_executor()
        executor.on_took = lambda took: self._adopt(host, executor, took)
        executor.on_result = self.durable.result_arrived
        await executor.load(host.digest, str(host.path), app, express=self.config.express)
        host.executors.append(executor)
        # Loads overlap (a warm-up and a call, two cold bundles): each made room before
        # the other finished, so look again now that this one is in.
        self._evict_if_full(room_for=0, keep=host)
        return executor

    def _evict_if_full(self, room_for: int, keep: BundleHost | None = None) -> None:
        """Close the least recently used idle bundles until ``room_for`` more executors fit."""
        total = sum(len(h.executors) for h in self.hosts.values())
        if keep is not None and keep.digest not in self.hosts:
            total += len(keep.executors)  # being loaded: not in the table yet
        for digest, host in list(self.hosts.items()):
            if total + room_for <= self.config.max_executors:
                return
            if host.users == 0 and host is not keep:
                del self.hosts[digest]
                total -= len(host.executors)
                for executor in host.executors:
                    self._spawn(executor.close())
                log.info("evicted bundle %s", digest[:12])
                self._warm_changed()

    def _ready_executor(self, host: BundleHost, is_sync: bool) -> ExecutorProcess | None:
        """A live executor that can take the call now, or None if one must be started."""
        live = [e for e in host.executors if e.alive]
        if not live:
            return None
        if not is_sync:
            return min(live, key=lambda e: len(e.calls))
        best = min(live, key=lambda e: e.running_sync)
        if best.running_sync > 0 and len(live) < self.config.slots:
            return None
        return best

    async def _pick_executor(self, host: BundleHost, app: str, is_sync: bool) -> ExecutorProcess:
        host.executors = [e for e in host.executors if e.alive]
        return self._ready_executor(host, is_sync) or await self._add_executor(host, app)

    async def _describe(self, host: BundleHost, inv: protocol.Invocation) -> dict[str, Any]:
        key = (inv.module, inv.qualname)
        task = host.meta.get(key)
        if task is None:
            task = host.meta[key] = asyncio.create_task(self._describe_once(host, inv))
        try:
            return await asyncio.shield(task)
        except Exception:
            host.meta.pop(key, None)  # let the next call try again (e.g. after a crash)
            raise

    async def _describe_once(self, host: BundleHost, inv: protocol.Invocation) -> dict[str, Any]:
        executor = await self._pick_executor(host, inv.app, is_sync=False)
        meta = await executor.describe(inv.module, inv.qualname)
        host.known[(inv.module, inv.qualname)] = meta
        return meta

    # --- invocations -------------------------------------------------------------

    async def _on_call(self, msg: Msg) -> None:
        """A call from the queue group: any node may serve it, ideally one holding it warm."""
        await self._take_call(msg, may_forward=self.config.affinity)

    async def _on_placed_call(self, msg: Msg) -> None:
        """A call sent to this node by name (its needs, a pin, or warm affinity)."""
        await self._take_call(msg, may_forward=False)

    async def _take_call(self, msg: Msg, *, may_forward: bool) -> None:
        reply = msg.reply or ""
        try:
            inv = protocol.Invocation.decode(msg.data)
        except Exception as exc:
            await self._reply_error(reply, "?", protocol.ERR_BAD_REQUEST, "BadInvocation", str(exc))
            return
        sender = (msg.headers or {}).get(protocol.FORWARDED_BY_HEADER)
        if sender:  # handed over by another node: it counts the call until we report it
            self._forwarded_from[inv.id] = sender
        if inv.remaining_s() <= 0:  # the caller has given up: running it would be wasted work
            self._forward_ended(inv.id)
            await self._reply_error(
                reply,
                inv.id,
                protocol.ERR_TIMEOUT,
                "DeadlineExceeded",
                f"{inv.app}.{inv.fn} reached a node after its caller's deadline",
            )
            return
        if may_forward and inv.digest not in self.hosts and self._forward_to_warm(inv, msg):
            if not self._full():  # room to spare: warm it here too, off the caller's path
                self._spawn(self._warm_up(inv))
            return
        client = protocol.client_of_reply(reply)
        if client is not None:
            self.held[inv.id] = (client, time.monotonic(), inv.deadline)
        self.accept(inv, msg)

    def _full(self) -> bool:
        """Loading one more bundle would evict a warm one."""
        return sum(len(h.executors) for h in self.hosts.values()) >= self.config.max_executors

    async def _warm_up(self, inv: protocol.Invocation) -> None:
        """Load a bundle another node served for us, so its next calls run here warm.

        Only while this node has room: a full node keeps handing the bundle's calls
        over instead of evicting one of its own, and the lattice as a whole keeps
        more bundles warm than any one node can.
        """
        try:
            host = await self._host(inv)
            await self._describe(host, inv)
        except Exception:  # the call itself was served elsewhere; the next one retries
            log.debug("could not warm %s up", inv.digest[:12], exc_info=True)

    def _forward_to_warm(self, inv: protocol.Invocation, msg: Msg) -> bool:
        """Warm affinity: this node would load the bundle cold, so hand the call to a
        node that holds it warm and has room. One hop at most (the receiver never
        forwards). "Room" means fewer than two calls per slot handed over and not yet
        reported done, so a hot bundle spills onto this node instead of piling up on one.
        (Heartbeat load figures are too stale for this: a node loading a bundle looks
        busy for the whole load.)"""
        assert self.directory is not None
        now = time.monotonic()
        best: tuple[int, protocol.NodeInfo] | None = None
        for node in fresh(self.directory.live()):
            if node.id == self.config.node_id or inv.digest not in node.warm:
                continue
            outstanding = self._forwards.setdefault(node.id, {})
            for inv_id, since in list(outstanding.items()):
                if now - since > FORWARD_FORGET_S:
                    del outstanding[inv_id]
            room = len(outstanding) < FORWARDS_PER_SLOT * node.slots
            if room and (best is None or len(outstanding) < best[0]):
                best = (len(outstanding), node)
        if best is None:
            return False
        node = best[1]
        self._forwards[node.id][inv.id] = now
        subject = protocol.node_call_subject(node.id, inv.app, inv.fn)
        headers = {protocol.FORWARDED_BY_HEADER: self.config.node_id}
        self._spawn(self.nc.publish(subject, msg.data, reply=msg.reply or "", headers=headers))
        return True

    async def _on_forward_done(self, msg: Msg) -> None:
        try:
            done = protocol.ForwardDone.decode(msg.data)
        except protocol.ProtocolError:
            return  # not from a node: nothing to count
        self._forwards.get(done.node, {}).pop(done.id, None)

    def _forward_ended(self, inv_id: str) -> None:
        """Tell the node that handed us this call that it ended (see _forward_to_warm)."""
        sender = self._forwarded_from.pop(inv_id, None)
        if sender is not None:
            done = protocol.ForwardDone(self.config.node_id, inv_id).encode()
            self._spawn(self.nc.publish(protocol.forward_done_subject(sender), done))

    def _on_registry_change(self, key: str) -> None:
        """A needs class appeared: pull its durable work if this node meets the needs."""
        assert self._registry is not None
        kind, _, cls = key.partition(".")
        needs = self._registry.placements.get(cls) if kind == "place" else None
        if needs is not None and satisfies(self.info(), needs):
            self.durable.add_source(protocol.placed_consumer(cls))

    def accept(self, inv: protocol.Invocation, msg: Request) -> None:
        """Run a decoded call now, or queue it until this node has room."""
        outcome = self._dispatch_now(inv, msg)
        if outcome == "sent":
            return
        self.queued += 1
        if outcome == "full":
            self.backlog.append((inv, msg))  # no task per waiting call: a flood stays cheap
        else:
            self._spawn(self._handle(inv, msg))

    def _drain_backlog(self) -> None:
        """Capacity was freed: dispatch waiting warm calls in arrival order."""
        while self.backlog:
            inv, msg = self.backlog[0]
            if inv.remaining_s() <= 0:
                self.backlog.popleft()
                self.queued -= 1
                self._spawn(
                    self._report_failure(
                        msg.reply or "",
                        inv,
                        CallTimeoutError(f"{inv.app}.{inv.fn} waited past its caller's deadline"),
                    )
                )
                continue
            outcome = self._dispatch_now(inv, msg)
            if outcome == "full":
                return
            self.backlog.popleft()
            if outcome == "cold":  # evicted meanwhile, or needs another executor
                self._spawn(self._handle(inv, msg))
                continue
            self.queued -= 1

    def _dispatch_now(self, inv: protocol.Invocation, msg: Request) -> str:
        """The fast path: warm bundle, known function, free capacity — no task, no await.

        Returns "sent", "full" (wait for capacity) or "cold" (needs the slow path:
        a bundle to fetch, a function to describe or an executor to start).
        """
        host = self.hosts.get(inv.digest)
        key = (inv.module, inv.qualname)
        meta = host.known.get(key) if host is not None else None
        if host is None or meta is None:
            return "cold"
        is_sync = not meta.get("is_async", False)
        pool = self.slots if is_sync else host.async_limit(key, meta, self.config.slots)
        executor = self._ready_executor(host, is_sync)
        if executor is None:
            return "cold"
        if not pool.try_acquire():
            return "full"
        self.hosts.move_to_end(inv.digest)
        self._dispatch(host, executor, inv, msg, meta, pool)
        return "sent"

    async def _handle(self, inv: protocol.Invocation, msg: Request) -> None:
        """The slow path: fetch the bundle, describe the function, wait for capacity."""
        queued = True
        host: BundleHost | None = None
        try:
            host = await self._host(inv)
            host.users += 1
            meta = await self._describe(host, inv)
            is_sync = not meta.get("is_async", False)
            key = (inv.module, inv.qualname)
            pool = self.slots if is_sync else host.async_limit(key, meta, self.config.slots)
            await pool.acquire()
            if inv.remaining_s() <= 0:
                pool.release()
                raise CallTimeoutError(f"{inv.app}.{inv.fn} waited past its caller's deadline")
            try:
                executor = await self._pick_executor(host, inv.app, is_sync)
            except BaseException:
                pool.release()
                raise
            self.queued -= 1
            queued = False
            self._dispatch(host, executor, inv, msg, meta, pool)
        except Exception as exc:  # every failure is answered; the node keeps serving
            await self._report_failure(msg.reply or "", inv, exc)
        finally:
            if queued:
                self.queued -= 1
            if host is not None:
                host.users -= 1

    def _dispatch(
        self,
        host: BundleHost,
        executor: ExecutorProcess,
        inv: protocol.Invocation,
        msg: Request,
        meta: dict[str, Any],
        pool: SlotPool,
    ) -> None:
        """Hand the call to the executor."""
        reply = msg.reply or ""
        if inv.id in self.durable.cancelled:  # cancelled while it waited here
            pool.release()
            self._spawn(
                self._reply_error(
                    reply,
                    inv.id,
                    protocol.ERR_CANCELLED,
                    "Cancelled",
                    f"invocation {inv.id} was cancelled",
                )
            )
            return
        executor.run(msg.data, reply, self._track(host, executor, inv, reply, meta, pool))

    def _adopt(self, host: BundleHost, executor: ExecutorProcess, took: protocol.Took) -> None:
        """An executor took a call a client sent it directly: account for it as if this
        agent had sent it (slot, timeout, memory, progress, span). The slot is taken
        even if none is free; the executor only takes a call when it is idle."""
        reply = took.reply or ""
        inv = protocol.Invocation.decode(took.inv)
        key = (inv.module, inv.qualname)
        meta = host.known.get(key, {})
        is_sync = not meta.get("is_async", False)
        pool = self.slots if is_sync else host.async_limit(key, meta, self.config.slots)
        pool.take()
        client = protocol.client_of_reply(reply)
        if client is not None:
            self.held[inv.id] = (client, time.monotonic(), inv.deadline)
        if inv.digest in self.hosts:
            self.hosts.move_to_end(inv.digest)
        self.express_calls += 1
        executor.adopt(self._track(host, executor, inv, reply, meta, pool), started=True)

    def _track(
        self,
        host: BundleHost,
        executor: ExecutorProcess,
        inv: protocol.Invocation,
        reply: str,
        meta: dict[str, Any],
        pool: SlotPool,
    ) -> Call:
        """A call record whose start, completion and timeout arrive as callbacks."""
        loop = asyncio.get_running_loop()
        memory_mb = inv.memory_mb or meta.get("memory_mb")
        call = Call(
            id=inv.id,
            is_sync=pool is self.slots,
            memory_bytes=int(memory_mb * 2**20) if memory_mb else None,
            done=loop.create_future(),
        )
        timeout_s = float(inv.timeout_s or meta.get("timeout_s") or DEFAULT_TIMEOUT_S)
        timers: list[asyncio.TimerHandle] = []
        started = 0.0

        def on_start() -> None:
            nonlocal started
            started = time.perf_counter()
            self.busy += 1
            timers.append(
                loop.call_later(timeout_s, self._on_timeout, executor, call, inv, reply, timeout_s)
            )

        def finished(done: asyncio.Future[bool]) -> None:
            self.held.pop(inv.id, None)
            self._forward_ended(inv.id)
            for timer in timers:
                timer.cancel()
            host.users -= 1
            if call.started:
                self.busy -= 1
            if call.holds_slot:
                pool.release()
            if self.backlog:
                self._drain_backlog()
            self.durable.room()
            self.durable.call_ended(inv.id)
            if done.cancelled():
                return
            error = done.exception()
            if error is not None:
                self._spawn(self._report_failure(reply, inv, error))  # type: ignore[arg-type]
                return
            self._served(inv, started, bool(done.result()))

        call.on_start = on_start
        call.done.add_done_callback(finished)
        host.users += 1
        return call

    def _served(self, inv: protocol.Invocation, started: float, ok: bool) -> None:
        self.served += 1
        self.traffic[f"{inv.app}@{inv.digest}"] += 1
        if inv.ctx.trace:
            self._spawn(self._publish_span(inv, started, ok))
        self.call_log.record("←" if ok else "✗", inv, (time.perf_counter() - started) * 1000)

    async def _publish_span(self, inv: protocol.Invocation, started: float, ok: bool) -> None:
        trace_id = inv.ctx.trace_id or inv.id
        span = protocol.Span(
            trace_id=trace_id,
            id=inv.id,
            parent_id=inv.ctx.parent_id,
            app=inv.app,
            fn=inv.fn,
            digest=inv.digest,
            node=self.config.node_id,
            started=time.time() - (time.perf_counter() - started),
            duration_s=time.perf_counter() - started,
            ok=ok,
            session=inv.ctx.session,
        )
        try:
            await self.nc.publish(protocol.trace_subject(trace_id), span.encode())
        except Exception:
            log.debug("could not record a span of %s", inv.id, exc_info=True)

    def cancel(self, inv_id: str) -> list[str]:
        """Kill the executor running ``inv_id``; returns the other calls that died with it."""
        neighbours: list[str] = []
        for host in self.hosts.values():
            for executor in host.executors:
                if inv_id in executor.calls:
                    neighbours += [c for c in executor.calls if c != inv_id]
                    why = f"executor restarted: invocation {inv_id} was cancelled"
                    executor.condemn((protocol.ERR_CRASHED, why))
                    log.info("✂ cancelled %s", inv_id)
        return neighbours

    def _on_timeout(
        self,
        executor: ExecutorProcess,
        call: Call,
        inv: protocol.Invocation,
        reply: str,
        timeout_s: float,
    ) -> None:
        if call.done.done():
            return
        self.held.pop(inv.id, None)
        executor.calls.pop(call.id, None)
        # Asked first, so it is answered (or not) before the kill that follows the quiet.
        stack = asyncio.get_running_loop().create_task(executor.stack_of(inv.id))
        killed = executor.condemn(
            (
                "crashed",
                f"executor restarted: invocation {inv.id} of "
                f"{inv.app}.{inv.fn} exceeded its timeout",
            )
        )
        call.done.cancel()

        async def answer() -> None:
            # Once it is dead: the caller's next call must not go express to it.
            where = await stack
            message = f"{inv.app}.{inv.fn} exceeded its timeout of {timeout_s:g} s and was killed"
            if where is None:
                message += (
                    "; its executor's event loop did not answer, so something blocked it "
                    "(blocking code in an async function, such as time.sleep, stops every "
                    "call on its executor)"
                )
            elif where:
                where = f"where it was (most recent call last):\n{where}"
            await self._reply_error(
                reply, inv.id, protocol.ERR_TIMEOUT, "TimeoutError", message, where or ""
            )

        killed.add_done_callback(lambda _: self._spawn(answer()))
        log.info("! %s.%s %s timeout after %g s", inv.app, inv.fn, inv.id, timeout_s)

    async def _report_failure(self, reply: str, inv: protocol.Invocation, exc: Exception) -> None:
        self.held.pop(inv.id, None)
        self._forward_ended(inv.id)
        if not isinstance(exc, LoadFailed | ExecutorDied | SuperposeError):
            log.exception("internal error serving %s", inv.id)
        info = _error_info(exc)
        await self._reply_error(reply, inv.id, info.kind, info.type, info.message, info.traceback)
        log.info("! %s.%s %s %s: %s", inv.app, inv.fn, inv.id, info.type, info.message)

    async def _reply_error(
        self, reply: str, inv_id: str, kind: str, type_name: str, message: str, tb: str = ""
    ) -> None:
        if not reply:
            return
        result = protocol.Result(
            id=inv_id,
            node=self.config.node_id,
            error=protocol.ErrorInfo(kind=kind, type=type_name, message=message, traceback=tb),
        )
        if reply == self.durable.reply:  # a durable item of ours (a crash, a timeout…)
            self.durable.result_arrived(result.encode())
        else:
            await self.nc.publish(reply, result.encode())


def _error_info(exc: Exception) -> protocol.ErrorInfo:
    """How a failure to serve a call is reported to its caller."""
    if isinstance(exc, LoadFailed):
        e = exc.error
        return protocol.ErrorInfo(e.kind, e.type, e.message, e.traceback)
    if isinstance(exc, ExecutorDied):
        kind_name = "MemoryLimitExceeded" if exc.kind == protocol.ERR_MEMORY else "ExecutorCrashed"
        return protocol.ErrorInfo(exc.kind, kind_name, exc.reason, exc.output)
    if isinstance(exc, CallTimeoutError):
        return protocol.ErrorInfo(protocol.ERR_TIMEOUT, "DeadlineExceeded", exc.message)
    if isinstance(exc, NotFoundError):
        return protocol.ErrorInfo(protocol.ERR_NOT_FOUND, "NotFound", exc.message)
    return protocol.ErrorInfo(protocol.ERR_INTERNAL, type(exc).__name__, str(exc))


SHUTDOWN_STEP_S = 2.0


async def _bounded(step: Any, what: str) -> None:
    """One shutdown step that talks to the lattice: it may be gone, so give up in time."""
    try:
        await asyncio.wait_for(step, SHUTDOWN_STEP_S)
    except Exception:
        log.debug("shutdown: could not %s", what, exc_info=True)
