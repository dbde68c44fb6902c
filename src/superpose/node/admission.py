"""Admission: a call runs now if its bundle is warm and a slot is free, else it waits.

The fast path (warm bundle, known function, free capacity) dispatches without a
task or an await; a full node keeps waiting calls in a backlog, not one task
each, so a flood stays cheap. The slow path fetches the bundle, asks the executor
to describe the function and waits for capacity. Sync calls share the node's
slots (times the pipeline depth: calls sent ahead run back to back); an async
function has its own limit, its ``concurrency`` per slot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container, Coroutine
from typing import Any, Literal, Protocol

from superpose import protocol
from superpose.errors import CallTimeoutError
from superpose.node.config import NodeConfig
from superpose.node.executor_process import Call, ExecutorProcess
from superpose.node.hosts import BundleHost
from superpose.node.pool import ExecutorPool
from superpose.node.slots import SlotPool

Spawn = Callable[[Coroutine[Any, Any, None]], None]
Outcome = Literal["sent", "full", "cold"]


class Request(Protocol):
    """A call as the node needs it: a direct call's NATS message, or a durable item."""

    data: bytes
    reply: str


class CallStarter(Protocol):
    """Hands a call to its executor and answers the calls that cannot run."""

    def track(
        self,
        host: BundleHost,
        executor: ExecutorProcess,
        inv: protocol.Invocation,
        reply: str,
        meta: dict[str, Any],
        pool: SlotPool,
    ) -> Call: ...

    async def report_failure(
        self, reply: str, inv: protocol.Invocation, exc: Exception
    ) -> None: ...

    async def reply_error(
        self, reply: str, inv_id: str, kind: str, type_name: str, message: str, tb: str = ""
    ) -> None: ...


class DurableRoom(Protocol):
    """The durable worker: it pulls work only while calls are not waiting here."""

    @property
    def cancelled(self) -> Container[str]: ...

    def room(self) -> None: ...


class Admission:
    def __init__(self, config: NodeConfig, pool: ExecutorPool, spawn: Spawn) -> None:
        self.config = config
        self.pool = pool
        self._spawn = spawn
        self.slots = SlotPool(config.capacity())
        self.busy = 0
        """Calls running now (started, not finished)."""
        self.queued = 0
        """Calls accepted and not yet handed to an executor."""
        self.backlog: deque[tuple[protocol.Invocation, Request]] = deque()
        """Warm calls waiting for capacity, dispatched as calls finish."""
        self.calls: CallStarter | None = None
        self.durable: DurableRoom | None = None

    def wire(self, calls: CallStarter, durable: DurableRoom) -> None:
        """The collaborators that need admission too, made after it."""
        self.calls, self.durable = calls, durable

    def pool_for(
        self, host: BundleHost, inv: protocol.Invocation, meta: dict[str, Any]
    ) -> SlotPool:
        """The capacity a call takes: the node's slots if sync, its function's own limit
        if async."""
        if not meta.get("is_async", False):
            return self.slots
        return host.async_limit((inv.module, inv.qualname), meta, self.config.slots)

    # --- accepting -----------------------------------------------------------------

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

    def drain_backlog(self) -> None:
        """Capacity was freed: dispatch waiting warm calls in arrival order."""
        while self.backlog:
            inv, msg = self.backlog[0]
            if inv.remaining_s() <= 0:
                self.backlog.popleft()
                self.queued -= 1
                self._spawn(self._starter.report_failure(msg.reply or "", inv, _late(inv)))
                continue
            outcome = self._dispatch_now(inv, msg)
            if outcome == "full":
                return
            self.backlog.popleft()
            if outcome == "cold":  # evicted meanwhile, or needs another executor
                self._spawn(self._handle(inv, msg))
                continue
            self.queued -= 1

    def _dispatch_now(self, inv: protocol.Invocation, msg: Request) -> Outcome:
        """The fast path: warm bundle, known function, free capacity — no task, no await."""
        host = self.pool.hosted(inv)
        meta = host.known.get((inv.module, inv.qualname)) if host is not None else None
        if host is None or meta is None:
            return "cold"
        pool = self.pool_for(host, inv, meta)
        executor = self.pool.ready_executor(host, pool is self.slots, inv.app)
        if executor is None:
            return "cold"
        if not pool.try_acquire():
            return "full"
        self.pool.touch(host.key)
        self._dispatch(host, executor, inv, msg, meta, pool)
        return "sent"

    async def _handle(self, inv: protocol.Invocation, msg: Request) -> None:
        """The slow path: fetch the bundle, describe the function, wait for capacity."""
        queued = True
        host: BundleHost | None = None
        try:
            host = await self.pool.host(inv)
            host.users += 1
            meta = await self.pool.describe(host, inv)
            pool = self.pool_for(host, inv, meta)
            await pool.acquire()
            if inv.remaining_s() <= 0:
                pool.release()
                raise _late(inv)
            try:
                executor = await self.pool.pick_executor(host, inv.app, pool is self.slots)
            except BaseException:
                pool.release()
                raise
            self.queued -= 1
            queued = False
            self._dispatch(host, executor, inv, msg, meta, pool)
        except Exception as exc:  # every failure is answered; the node keeps serving
            await self._starter.report_failure(msg.reply or "", inv, exc)
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
        """Hand the call to the executor (unless it was cancelled while it waited here)."""
        reply = msg.reply or ""
        if self.durable is not None and inv.id in self.durable.cancelled:
            pool.release()
            self._spawn(
                self._starter.reply_error(
                    reply,
                    inv.id,
                    protocol.ERR_CANCELLED,
                    "Cancelled",
                    f"invocation {inv.id} was cancelled",
                )
            )
            return
        executor.run(msg.data, reply, self._starter.track(host, executor, inv, reply, meta, pool))

    @property
    def _starter(self) -> CallStarter:
        assert self.calls is not None, "admission is wired to the call tracker at start-up"
        return self.calls

    # --- capacity ------------------------------------------------------------------

    def started(self) -> None:
        """A call began running in its executor."""
        self.busy += 1

    def ended(self, call: Call, pool: SlotPool) -> None:
        """A call ended: its capacity goes to the next waiting call."""
        if call.started:
            self.busy -= 1
        if call.holds_slot:
            pool.release()
        if self.backlog:
            self.drain_backlog()
        if self.durable is not None:
            self.durable.room()

    def on_block(self, call: Call) -> None:
        """A sync call waits on its children: its slot is lent to the next call meanwhile,
        or a recursive fan-out on a small lattice would deadlock."""
        if call.holds_slot and call.is_sync:
            call.holds_slot = False
            self.slots.release()
            self.drain_backlog()
            if self.durable is not None:
                self.durable.room()

    def on_unblock(self, call: Call) -> None:
        """It resumed: it takes its slot back, even past the limit for a moment."""
        if not call.holds_slot and call.is_sync:
            call.holds_slot = True
            self.slots.take()


def _late(inv: protocol.Invocation) -> CallTimeoutError:
    return CallTimeoutError(f"{inv.app}.{inv.fn} waited past its caller's deadline")
