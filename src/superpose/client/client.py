"""The client: a connection to the lattice that submits invocations and collects results.

Its core is asyncio on one loop — a background thread in scripts, the
executor's own loop on a node, the server's loop in the gateway — and the
sync facade hands work to that loop. Submissions go through an outbox drained
by one sender task, so 20,000 spawns cost 20,000 publishes and one flush per
batch, not 20,000 tasks. Results arrive on one wildcard reply subscription.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from superpose import config, protocol, runtime
from superpose.client import session, threads
from superpose.client.durable import wait_accepted
from superpose.client.durable_calls import DurableCalls
from superpose.client.express import ExpressRoutes
from superpose.client.functions import RemoteFunction
from superpose.client.futures import Future, fail, succeed
from superpose.client.names import Names
from superpose.client.options import Options
from superpose.client.placement import Placement
from superpose.client.progress import progress_bar
from superpose.client.scripts import ScriptBundles
from superpose.client.threads import on_loop
from superpose.errors import (
    CallTimeoutError,
    NoNodesError,
    RemoteError,
    SuperposeError,
    as_superpose_error,
)
from superpose.lattice import payload
from superpose.lattice.connection import Assets, ensure_assets
from superpose.lattice.connection import connect as connect_nats
from superpose.lattice.offers import Offers
from superpose.registry.mirror import Registry, Target, split_name
from superpose.registry.placement import NodeDirectory

T = TypeVar("T")
RETRYABLE = (protocol.ERR_CRASHED, protocol.ERR_INTERNAL)
RETRY_BACKOFF_S = 0.2
REAP_INTERVAL_S = 0.25
CLOSE_WAIT_S = 2.0
OFFER_GRACE_S = 30.0
"""A big argument stays offered this long past its call's deadline, if never settled."""
LOST_SCAN_EVERY = 4
"""Reaper ticks between scans for calls whose node went silent (once a second)."""


@dataclass
class _Pending:
    future: Future
    inv: protocol.Invocation
    raw_args: bytes
    attempts_left: int
    wait_for_node: float = 0.0
    placing: bool = False
    """Waiting for a node that meets its needs: no node holds it yet, none can be lost."""
    heard: float = 0.0
    """When a node last reported holding this call (or when it was sent)."""
    node: str = ""
    express: bool = False
    """Sent to its bundle's warm executors directly, and not answered yet."""


LogSink = Callable[[protocol.LogRecord], None]


def print_log_record(record: protocol.LogRecord) -> None:
    """Remote prints, prefixed with the function and the node that printed them."""
    stream = sys.stderr if record.stream in ("stderr", "log") else sys.stdout
    stream.write(f"[{record.fn}@{record.node}] {record.line}\n")
    stream.flush()


class Client:
    def __init__(
        self,
        nc: NATS,
        assets: Assets,
        loop: asyncio.AbstractEventLoop,
        *,
        url: str,
        log_sink: LogSink | None = None,
    ) -> None:
        self.nc = nc
        self.assets = assets
        self.loop = loop
        self.url = url
        self.id = uuid.uuid4().hex[:16]
        self.offers = Offers(nc, self.id)
        """Big arguments of this client's direct calls (and, in an executor, big results)."""
        self.log_sink = log_sink
        self._pending: dict[str, _Pending] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._outbox: deque[_Pending] = deque()
        self._outbox_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._names = Names(assets.registry, loop)
        self._scripts = ScriptBundles(nc, loop)
        self._placement = Placement(nc, assets.nodes, self._names)
        self._express = ExpressRoutes(config.express_from_env())
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._closed = False
        self._seq = itertools.count(1)
        """One count for all of this client's invocations, direct and durable."""
        self._wake_scheduled = False
        self._durable = DurableCalls(
            nc, assets, client_id=self.id, loop=loop, seq=self._seq, placement=self._placement
        )
        self.after_close: Callable[[], None] | None = None
        """Run once the client is closed (the sync facade stops its loop's thread)."""

    # --- opening and closing ---------------------------------------------------

    @classmethod
    async def open(
        cls, url: str, *, nc: NATS | None = None, log_sink: LogSink | None = None
    ) -> Client:
        """A client on the running loop; reuses ``nc`` when given (executors, gateway)."""
        own = nc is None
        nc = nc or await connect_nats(url, name="superpose-client")
        assets = await ensure_assets(nc)
        client = cls(nc, assets, asyncio.get_running_loop(), url=url, log_sink=log_sink)
        if own:
            client._closers.append(nc.close)
        await client._start()
        return client

    async def _start(self) -> None:
        await self.nc.subscribe(
            protocol.reply_wildcard(self.id),
            cb=self._on_reply,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        await self.nc.subscribe(
            self.offers.subject,
            cb=self.offers.serve,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        await self.nc.subscribe(
            protocol.progress_subject(self.id),
            cb=self._on_progress,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        self._tasks.append(self.loop.create_task(self._send_loop()))
        self._tasks.append(self.loop.create_task(self._reap_loop()))
        self._durable.start(self._spawn)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(self.loop.create_task(coro))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        # Bounded: nats-py's flush can swallow a cancellation, leaving a loop alive.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CLOSE_WAIT_S)
        await self._names.stop()
        await self._placement.stop()
        closed = SuperposeError("the client was closed before the call finished")
        for pending in self._pending.values():
            fail(pending.future, closed)
        self._pending.clear()
        self._durable.fail_all(closed)
        for closer in reversed(self._closers):
            await closer()

    # --- sync facade plumbing ----------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop from another thread and wait for it."""
        return threads.run(self.loop, coro)

    def close(self) -> None:
        session.forget(self)
        if on_loop(self.loop):
            return
        if self.loop.is_running():
            self.run(self.aclose())
        if self.after_close is not None:
            self.after_close()

    def close_first(self, closer: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``closer`` first when the client closes (an embedded lattice it owns)."""
        self._closers.insert(0, closer)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if runtime.current() is None:
            self.close()

    # --- names -------------------------------------------------------------------

    async def registry(self) -> Registry:
        return await self._names.registry()

    def resolve(
        self, app: str, fn: str, version: str | None = None, ctx: protocol.CallContext | None = None
    ) -> Target:
        return self._names.resolve(app, fn, version, ctx)

    def call_context(
        self,
        options: Options,
        app: str | None = None,
        kwargs: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        fn: str | None = None,
        args: Sequence[Any] = (),
    ) -> protocol.CallContext:
        return self._names.call_context(options, app, kwargs, headers, fn=fn, args=args)

    def function(self, name: str, version: str | None = None) -> RemoteFunction:
        """A deployed function by name: ``"app.fn"`` or ``"app.fn@version"``."""
        app, fn, at = split_name(name)
        handle = RemoteFunction(app, fn, version or at, Options())
        handle._bound_client = self
        if not on_loop(self.loop):
            self.resolve(app, fn, version or at)  # fail now on an unknown name
        return handle

    def script_bundle(self, module_name: str) -> tuple[str, str, str]:
        return self._scripts.bundle(module_name)

    # --- invocations ---------------------------------------------------------------

    def submit(
        self,
        target: Target,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: Options,
        *,
        codec: str = protocol.CODEC_PICKLE,
        durable: bool = False,
        ctx: protocol.CallContext | None = None,
    ) -> Future:
        """Start one invocation from any thread; the future resolves with its result.

        ``durable`` persists it in JetStream first (spawn, map): it survives node
        deaths and broker restarts. Otherwise it is a direct request (remote).
        """
        raw = payload.encode_args(args, kwargs, codec)
        if durable:
            return self.submit_durable(target, raw, codec, options, ctx)
        return self.submit_raw(target, raw, codec, options, ctx)

    def submit_durable(
        self,
        target: Target,
        raw_args: bytes,
        codec: str,
        options: Options,
        ctx: protocol.CallContext | None = None,
    ) -> Future:
        if self._closed or not self._durable.started:
            raise SuperposeError("this superpose client is closed")
        ctx = ctx or runtime.child_context()
        if ctx.log_to is None and self.log_sink is not None:
            ctx.log_to = protocol.client_log_subject(self.id)
        return self._durable.submit(target, raw_args, codec, options, ctx)

    def resubmit(self, inv: protocol.Invocation) -> Future:
        """Submit an invocation again (already wrapped) under a new id, from attempt 1."""
        if self._closed or not self._durable.started:
            raise SuperposeError("this superpose client is closed")
        return self._durable.resubmit(inv)

    async def invoke_json(
        self,
        target: Target,
        args_json: bytes,
        *,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        ctx: protocol.CallContext | None = None,
    ) -> str:
        """Persist a durable invocation with JSON arguments; returns its id once accepted."""
        options = Options(idempotency_key=idempotency_key, timeout=timeout_s)
        future = self.submit_durable(target, args_json, protocol.CODEC_JSON, options, ctx)
        return await wait_accepted(future)

    async def nodes(self) -> NodeDirectory:
        return await self._placement.nodes()

    # --- durable invocations by id ---------------------------------------------------

    def cancel(self, invocation_id: str) -> bool:
        """Cancel a durable invocation: dropped if queued, killed if running."""
        return bool(self.run(self.cancel_async([invocation_id])))

    async def cancel_async(self, ids: list[str]) -> list[str]:
        """Cancel durable invocations by id; returns those that had not finished."""
        return await self._durable.cancel(ids)

    def cancel_many(self, futures: list[Future]) -> None:
        """Cancel many durable invocations at once (a map stopped early)."""
        if not self._closed:
            self._durable.cancel_many(futures)

    def speculate(self, invocation_id: str) -> None:
        self._durable.speculate(invocation_id)

    def stop_copies(self, invocation_id: str) -> None:
        self._durable.stop_copies(invocation_id)

    async def result_async(
        self, invocation_id: str, *, wait: bool = True, timeout: float | None = None
    ) -> protocol.Result | None:
        return await self._durable.lookup(invocation_id, wait=wait, timeout=timeout)

    def result(self, invocation_id: str, *, timeout: float | None = None) -> Any:
        """Wait for a durable invocation's result by id, from any process.

        Raises ``RemoteError`` if it failed, ``CallTimeoutError`` if ``timeout`` passes.
        """
        return self._durable.result(invocation_id, timeout=timeout)

    # --- direct invocations ----------------------------------------------------------

    def submit_raw(
        self,
        target: Target,
        raw_args: bytes,
        codec: str,
        options: Options,
        ctx: protocol.CallContext | None = None,
    ) -> Future:
        if self._closed:
            raise SuperposeError("this superpose client is closed")
        timeout_s = options.timeout or target.options.get("timeout") or config.DEFAULT_TIMEOUT_S
        inv = protocol.Invocation(
            id=f"{self.id}{next(self._seq):x}",
            app=target.app,
            fn=target.fn,
            digest=target.digest,
            module=target.module,
            qualname=target.qualname,
            args=protocol.Payload(codec=codec, size=len(raw_args)),
            deadline=time.time() + float(timeout_s) + config.WAIT_MARGIN_S,
            timeout_s=options.timeout,
            memory_mb=options.memory,
            ctx=ctx or runtime.child_context(),
            needs=self._placement.needs(target, options),
        )
        if inv.ctx.log_to is None and self.log_sink is not None:
            inv.ctx.log_to = protocol.client_log_subject(self.id)
        future = Future()
        future.invocation_id = inv.id
        retries = options.retries or int(target.options.get("retries", 0) or 0)
        if options.idempotent:  # safe to run again when its node dies
            retries = max(retries, 1)
        self._outbox.append(_Pending(future, inv, raw_args, retries, options.wait_for_node))
        if not self._wake_scheduled:  # one wake-up per batch, not per submission
            self._wake_scheduled = True
            if on_loop(self.loop):
                self._outbox_ready.set()
            else:
                self.loop.call_soon_threadsafe(self._outbox_ready.set)
        return future

    async def _send_loop(self) -> None:
        while not self._closed:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            self._wake_scheduled = False
            while self._outbox:
                pending = self._outbox.popleft()
                try:
                    await self._send(pending)
                except Exception as exc:  # spill or publish failed: fail this call only
                    fail(pending.future, as_superpose_error(exc))
            # No flush(): nats-py's flusher writes the batch in one syscall as it is, and a
            # flush adds a PING write and a PONG to read to every call (measured: 10 % of
            # the client's CPU on a sequential warm call).

    async def _send(self, pending: _Pending) -> None:
        inv = pending.inv
        if pending.future.cancelled():
            return
        if inv.args.data is None and inv.args.blob is None:
            hold_s = max(0.0, inv.remaining_s()) + OFFER_GRACE_S
            inv.args = payload.offer(self.offers, pending.raw_args, inv.args.codec, hold_s)
            if inv.args.source is not None:  # retries resend it: withdrawn when settled
                args = inv.args
                pending.future.add_done_callback(lambda _: self.offers.withdraw(args))
        self._pending[inv.id] = pending
        pending.heard = time.monotonic()
        heapq.heappush(self._deadlines, (inv.deadline, inv.id))
        if inv.needs:
            pending.placing = True
            self.loop.create_task(self._publish_or_fail(pending))  # may wait for a node
        else:
            await self._publish_call(pending)

    async def _publish_or_fail(self, pending: _Pending) -> None:
        """Publish from a task or callback of its own: a failure fails this call only."""
        try:
            await self._publish_call(pending)
        except Exception as exc:
            self._pending.pop(pending.inv.id, None)
            fail(pending.future, as_superpose_error(exc))

    async def _publish_call(self, pending: _Pending) -> None:
        """To the queue group (NATS picks a node), or to the chosen node when the call
        has needs or a pin; a retry chooses again."""
        inv = pending.inv
        subject = protocol.call_subject(inv.app, inv.fn)
        if inv.needs:
            pending.placing = True
            try:
                pending.node = await self._placement.node_for(inv, pending.wait_for_node)
            finally:
                pending.placing = False
                pending.heard = time.monotonic()
            subject = protocol.node_call_subject(pending.node, inv.app, inv.fn)
        elif self._express.take(inv.digest):
            pending.express = True
            subject = protocol.express_subject(inv.digest, inv.app, inv.fn)
        try:
            await self.nc.publish(
                subject, inv.encode(), reply=protocol.reply_subject(self.id, inv.id)
            )
        except BaseException:
            self._express_settled(pending)
            raise

    def _express_settled(self, pending: _Pending) -> None:
        if pending.express:
            pending.express = False
            self._express.release(pending.inv.digest)

    async def _on_reply(self, msg: Msg) -> None:
        inv_id = msg.subject.rsplit(".", 1)[-1]
        if inv_id == protocol.CLIENT_LOG_TOKEN:
            self._on_log(msg)
            return
        if inv_id == protocol.DURABLE_NOTIFY_TOKEN:
            self._durable.on_notify(msg)
            return
        pending = self._pending.get(inv_id)
        if pending is not None:
            await self._settle(pending, msg)

    async def _settle(self, pending: _Pending, msg: Msg) -> None:
        """A node's answer to one of our direct calls: its result, its error, or no one."""
        inv_id = pending.inv.id
        if pending.inv.needs:
            self._placement.answered(pending.node)
        no_responders = bool(msg.headers and msg.headers.get("Status") == "503")
        if pending.express:
            self._express_settled(pending)
            if no_responders:  # not warm anywhere: the queue group's nodes load it
                self._express.went_cold(pending.inv.digest)
                await self._publish_or_fail(pending)
                return
        if no_responders:
            await self._retry_or_fail(
                pending,
                NoNodesError(
                    "no node is serving the lattice: start one with `superpose up` or "
                    f"`superpose worker --lattice {self.url}`"
                ),
            )
            return
        try:
            result = protocol.Result.decode(msg.data)
        except ValueError as exc:
            self._pending.pop(inv_id, None)
            fail(pending.future, SuperposeError(f"unreadable reply for {inv_id}: {exc}"))
            return
        if result.error is not None:
            error = RemoteError.from_info(result.error, result.node)
            if result.error.kind in RETRYABLE:
                await self._retry_or_fail(pending, error)
            else:
                self._pending.pop(inv_id, None)
                fail(pending.future, error)
            return
        self._pending.pop(inv_id, None)
        assert result.value is not None
        if result.value.blob is None:
            succeed(pending.future, result.value)
        else:
            self.loop.create_task(self._fetch_result(pending.future, result.value))

    async def _fetch_result(self, future: Future, value: protocol.Payload) -> None:
        try:
            data = await payload.unwrap(self.nc, value)
            await payload.discard(self.nc, value)
        except Exception as exc:
            fail(future, as_superpose_error(exc))
            return
        succeed(future, protocol.Payload(codec=value.codec, data=data))

    async def _retry_or_fail(self, pending: _Pending, error: SuperposeError) -> None:
        inv_id = pending.inv.id
        self._express_settled(pending)
        if pending.attempts_left <= 0 or pending.future.cancelled():
            self._pending.pop(inv_id, None)
            fail(pending.future, error)
            return
        pending.attempts_left -= 1
        await asyncio.sleep(RETRY_BACKOFF_S)
        pending.heard = time.monotonic()
        try:
            await self._publish_call(pending)
        except Exception as exc:  # no node meets its needs any more
            self._pending.pop(inv_id, None)
            fail(pending.future, as_superpose_error(exc))

    async def _on_progress(self, msg: Msg) -> None:
        try:
            progress = protocol.Progress.decode(msg.data)
        except ValueError:
            return
        now = time.monotonic()
        for inv_id in progress.ids:
            pending = self._pending.get(inv_id)
            if pending is not None:
                pending.heard, pending.node = now, progress.node

    async def _find_lost(self) -> None:
        """A call no node has reported for LOST_AFTER_S was held by a node that died."""
        now = time.monotonic()
        lost = [
            p
            for p in self._pending.values()
            if now - p.heard > protocol.LOST_AFTER_S and not p.placing
        ]
        for pending in lost:
            inv = pending.inv
            where = f"node {pending.node}" if pending.node else "the node that took it"
            error = RemoteError(
                protocol.ERR_CRASHED,
                "NodeLost",
                f"{where} stopped reporting {inv.app}.{inv.fn} ({inv.id}) for "
                f"{protocol.LOST_AFTER_S:g} s: the node died or lost the lattice",
                node=pending.node,
            )
            pending.heard = now  # one verdict per silence, even while a retry is pending
            self.loop.create_task(self._retry_or_fail(pending, error))

    async def _reap_loop(self) -> None:
        """Every wait has an end: calls past their deadline fail with a timeout,
        and calls whose node went silent are retried or failed."""
        ticks, last = 0, time.monotonic()
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            ticks += 1
            lag = time.monotonic() - last - REAP_INTERVAL_S
            last = time.monotonic()
            if lag > REAP_INTERVAL_S:  # this loop stalled: nodes' reports may still be unread
                for pending in self._pending.values():
                    pending.heard += lag
            elif ticks % LOST_SCAN_EVERY == 0:
                await self._find_lost()
            now = time.time()
            while self._deadlines and self._deadlines[0][0] < now:
                _, inv_id = heapq.heappop(self._deadlines)
                expired = self._pending.pop(inv_id, None)
                if expired is not None:
                    self._express_settled(expired)
                    fail(
                        expired.future,
                        CallTimeoutError(
                            f"{expired.inv.app}.{expired.inv.fn} ({inv_id}) got no answer "
                            "before its deadline; the node serving it may have died"
                        ),
                    )

    def _on_log(self, msg: Msg) -> None:
        if self.log_sink is not None:
            try:
                self.log_sink(protocol.LogRecord.decode(msg.data))
            except Exception:  # a broken log line must never break calls
                return

    # --- conveniences for map and the CLI ---------------------------------------------

    def progress(self, total: int | None, label: str) -> AbstractContextManager[Callable[[], None]]:
        return progress_bar(total, label)

    async def call_json(
        self,
        target: Target,
        args_json: bytes,
        timeout_s: float | None = None,
        ctx: protocol.CallContext | None = None,
    ) -> bytes:
        """Run with JSON arguments (``{"args": [...], "kwargs": {...}}``); returns JSON bytes."""
        options = Options(timeout=timeout_s)
        future = self.submit_raw(target, args_json, protocol.CODEC_JSON, options, ctx)
        result: bytes = await asyncio.wrap_future(future)
        return result


async def open_node_client(nc: NATS) -> None:
    """An executor's client: user code's nested calls share its connection and loop.
    (The executor process is composed in ``cli/executor.py``, above the node and
    this layer, which may not import each other.)"""
    url = nc.connected_url.geturl() if nc.connected_url else ""
    session.set_node_client(await Client.open(url, nc=nc))
