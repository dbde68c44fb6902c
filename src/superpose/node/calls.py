"""Every call a node runs, from hand-over to its end: its timeout, its capacity, its
report. One greppable line per call in the node's log, a span when it is traced,
and an answer for every call that fails before or after it reached user code."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from superpose import protocol
from superpose.config import DEFAULT_TIMEOUT_S
from superpose.errors import CallTimeoutError, DeployError, NotFoundError, SuperposeError
from superpose.node.call_log import CallLog
from superpose.node.executor_process import Call, ExecutorDied, ExecutorProcess, LoadFailed
from superpose.node.hosts import BundleHost
from superpose.node.link import Link
from superpose.node.progress import HeldCalls
from superpose.node.slots import SlotPool

log = logging.getLogger("superpose.node")
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Capacity(Protocol):
    """Admission's side of a call's life: it counts running calls and frees capacity."""

    def started(self) -> None: ...

    def ended(self, call: Call, pool: SlotPool) -> None: ...


class Forwards(Protocol):
    """Warm affinity: the node that handed us a call hears when it ends."""

    def forward_ended(self, inv_id: str) -> None: ...


class DurableResults(Protocol):
    """The durable worker: results of its items come back to it, not over NATS."""

    @property
    def reply(self) -> str: ...

    def result_arrived(self, data: bytes) -> None: ...

    def call_ended(self, inv_id: str) -> None: ...


@dataclass
class _Watch:
    """One call between hand-over and its end, with what its end must undo."""

    host: BundleHost
    executor: ExecutorProcess
    inv: protocol.Invocation
    reply: str
    pool: SlotPool
    call: Call
    timeout_s: float
    started: float = 0.0
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class CallTracker:
    def __init__(
        self,
        link: Link,
        held: HeldCalls,
        capacity: Capacity,
        forwards: Forwards,
        durable: DurableResults,
        spawn: Spawn,
    ) -> None:
        self.link = link
        self.held = held
        self.capacity = capacity
        self.forwards = forwards
        self.durable = durable
        self._spawn = spawn
        self.call_log = CallLog()
        self.served = 0
        self.traffic: Counter[str] = Counter()
        """Calls served per ``app@digest`` since the node started (canary splits)."""

    def track(
        self,
        host: BundleHost,
        executor: ExecutorProcess,
        inv: protocol.Invocation,
        reply: str,
        meta: dict[str, Any],
        pool: SlotPool,
    ) -> Call:
        """A call record whose start, completion and timeout arrive as callbacks."""
        memory_mb = inv.memory_mb or meta.get("memory_mb")
        call = Call(
            id=inv.id,
            is_sync=not meta.get("is_async", False),
            memory_bytes=int(memory_mb * 2**20) if memory_mb else None,
            done=asyncio.get_running_loop().create_future(),
        )
        timeout_s = float(inv.timeout_s or meta.get("timeout_s") or DEFAULT_TIMEOUT_S)
        watch = _Watch(host, executor, inv, reply, pool, call, timeout_s)
        call.on_start = lambda: self._started(watch)
        call.done.add_done_callback(lambda done: self._finished(watch, done))
        host.users += 1
        return call

    def _started(self, watch: _Watch) -> None:
        watch.started = time.perf_counter()
        self.capacity.started()
        loop = asyncio.get_running_loop()
        watch.timers.append(loop.call_later(watch.timeout_s, self._timed_out, watch))

    def _finished(self, watch: _Watch, done: asyncio.Future[bool]) -> None:
        inv = watch.inv
        self.held.release(inv.id)
        self.forwards.forward_ended(inv.id)
        for timer in watch.timers:
            timer.cancel()
        watch.host.users -= 1
        self.capacity.ended(watch.call, watch.pool)
        self.durable.call_ended(inv.id)
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            self._spawn(self.report_failure(watch.reply, inv, error))  # type: ignore[arg-type]
            return
        self._served(inv, watch.started, bool(done.result()))

    def _served(self, inv: protocol.Invocation, started: float, ok: bool) -> None:
        self.served += 1
        self.traffic[f"{inv.app}@{protocol.version_id(inv.digest, inv.env)}"] += 1
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
            digest=protocol.version_id(inv.digest, inv.env),
            node=self.link.node_id,
            started=time.time() - (time.perf_counter() - started),
            duration_s=time.perf_counter() - started,
            ok=ok,
            session=inv.ctx.session,
        )
        try:
            await self.link.nc.publish(protocol.trace_subject(trace_id), span.encode())
        except Exception:
            log.debug("could not record a span of %s", inv.id, exc_info=True)

    # --- timeouts ------------------------------------------------------------------

    def _timed_out(self, watch: _Watch) -> None:
        """Kill the executor of a call past its timeout, and say where the call was."""
        call, inv, executor = watch.call, watch.inv, watch.executor
        if call.done.done():
            return
        self.held.release(inv.id)
        executor.calls.pop(call.id, None)
        # Asked first, so it is answered (or not) before the kill that follows the quiet.
        stack = asyncio.get_running_loop().create_task(executor.stack_of(inv.id))
        why = f"executor restarted: invocation {inv.id} of {inv.app}.{inv.fn} exceeded its timeout"
        killed = executor.condemn(("crashed", why))
        call.done.cancel()
        # Answered once it is dead: the caller's next call must not go express to it.
        killed.add_done_callback(lambda _: self._spawn(self._answer_timeout(watch, stack)))
        log.info("! %s.%s %s timeout after %g s", inv.app, inv.fn, inv.id, watch.timeout_s)

    async def _answer_timeout(self, watch: _Watch, stack: asyncio.Task[str | None]) -> None:
        inv = watch.inv
        where = await stack
        message = f"{inv.app}.{inv.fn} exceeded its timeout of {watch.timeout_s:g} s and was killed"
        if where is None:
            message += (
                "; its executor's event loop did not answer, so something blocked it "
                "(blocking code in an async function, such as time.sleep, stops every "
                "call on its executor)"
            )
        elif where:
            where = f"where it was (most recent call last):\n{where}"
        await self.reply_error(
            watch.reply, inv.id, protocol.ERR_TIMEOUT, "TimeoutError", message, where or ""
        )

    # --- answers -------------------------------------------------------------------

    async def report_failure(self, reply: str, inv: protocol.Invocation, exc: Exception) -> None:
        """Answer a call that failed outside user code (a load, a crash, a deadline)."""
        self.held.release(inv.id)
        self.forwards.forward_ended(inv.id)
        if not isinstance(exc, LoadFailed | ExecutorDied | SuperposeError):
            log.exception("internal error serving %s", inv.id)
        info = _error_info(exc)
        await self.reply_error(reply, inv.id, info.kind, info.type, info.message, info.traceback)
        log.info("! %s.%s %s %s: %s", inv.app, inv.fn, inv.id, info.type, info.message)

    async def reply_error(
        self, reply: str, inv_id: str, kind: str, type_name: str, message: str, tb: str = ""
    ) -> None:
        if not reply:
            return
        result = protocol.Result(
            id=inv_id,
            node=self.link.node_id,
            error=protocol.ErrorInfo(kind=kind, type=type_name, message=message, traceback=tb),
        )
        if reply == self.durable.reply:  # a durable item of ours (a crash, a timeout…)
            self.durable.result_arrived(result.encode())
        else:
            await self.link.nc.publish(reply, result.encode())


_DIED_AS = {protocol.ERR_MEMORY: "MemoryLimitExceeded", protocol.ERR_PREPARE: "StartHookFailed"}
"""The error type of calls an executor took with it, by how it ended."""


def _error_info(exc: Exception) -> protocol.ErrorInfo:
    """How a failure to serve a call is reported to its caller."""
    if isinstance(exc, LoadFailed):
        e = exc.error
        return protocol.ErrorInfo(e.kind, e.type, e.message, e.traceback)
    if isinstance(exc, ExecutorDied):
        kind_name = _DIED_AS.get(exc.kind, "ExecutorCrashed")
        return protocol.ErrorInfo(exc.kind, kind_name, exc.reason, exc.output)
    if isinstance(exc, CallTimeoutError):
        return protocol.ErrorInfo(protocol.ERR_TIMEOUT, "DeadlineExceeded", exc.message)
    if isinstance(exc, NotFoundError):
        return protocol.ErrorInfo(protocol.ERR_NOT_FOUND, "NotFound", exc.message)
    if isinstance(exc, DeployError):  # a bundle no node can unpack: trying again won't help
        return protocol.ErrorInfo(protocol.ERR_PREPARE, "DeployError", exc.message)
    return protocol.ErrorInfo(protocol.ERR_INTERNAL, type(exc).__name__, str(exc))
