"""The executor: hosts one bundle and runs its functions.

Started neutral by the node agent (imports done, lattice connected), it
collapses into one bundle on ``load`` and stays that way until evicted. Sync
functions run in lane threads (``lane.py``), async ones on the event loop.
Results go straight to the caller's reply subject; the agent only hears
``done``, so big results never pass through it. Everything a call sends back
(its frames, its printed lines, its result) leaves in order through
``replies.py``.

Calls come from the agent over the channel, or, once the bundle is warm, straight
from clients on the bundle's express subject (``express.py``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from superpose import protocol, runtime
from superpose.config import SPILL_THRESHOLD_BYTES
from superpose.lattice import inputs, memo_store, offers, payload
from superpose.lattice.memo_store import MemoStore
from superpose.lattice.offers import Offers
from superpose.lattice.ref_args import RefCache, decode_args
from superpose.lattice.refs import Ref
from superpose.node.channel import Channel
from superpose.node.executor import memo_writes
from superpose.node.executor.app_user import AppConnection, ConnectAs
from superpose.node.executor.asgi import AsgiRunner
from superpose.node.executor.capture import Output, capture
from superpose.node.executor.confine import end_strays
from superpose.node.executor.environ import apply_settings, not_prepared
from superpose.node.executor.environment import use_environment
from superpose.node.executor.express import ExpressCalls
from superpose.node.executor.functions import Functions, is_async, top_level_modules
from superpose.node.executor.hooks import StartHooks
from superpose.node.executor.lane import SyncLane
from superpose.node.executor.replies import Replies
from superpose.node.executor.reports import awaiting_frames, error_info, user_frames
from superpose.node.executor.waiting import wait_in_lane, wait_on_loop
from superpose.node.output import copy_line

OFFERS_DRAIN_S = 1.5
"""On stopping, how long to keep serving results their callers have not pulled yet
(the agent kills an executor that has not exited 2 s after its channel closed)."""
SyncJob = tuple[protocol.Invocation, str, bool]
"""(invocation, reply, announced): a sync call for the lane."""


class Executor:
    def __init__(
        self,
        nc: NATS,
        channel: Channel[protocol.FromAgent],
        node_id: str,
        offered: Offers,
        connect_as: ConnectAs | None = None,
    ) -> None:
        self.nc = nc
        self.channel = channel
        self.node_id = node_id
        self.offers = offered
        """Big results of direct calls, until their callers have pulled them."""
        self.loop = asyncio.get_running_loop()
        self.functions = Functions()
        self.outputs: list[Output] = []
        self.lane = SyncLane(self._run_sync)
        self.http = AsgiRunner(nc)
        self.in_flight = 0
        """Calls accepted and not yet answered, from either source."""
        self.hooks = StartHooks(self.loop)
        self.replies = Replies(nc, channel, protocol.node_results_subject(node_id), self._answered)
        self.app = AppConnection(connect_as)
        """The app user's connection (express calls, the app's dicts, queues, cache)."""
        self.express = ExpressCalls(
            nc,
            channel,
            lambda: self.in_flight == 0 and self.hooks.failure is None,
            lambda inv, reply: self._accept(inv, reply, True),
            self.app,
        )
        self.refs = RefCache(nc)
        """Objects of Refs given as arguments, fetched once for every call here."""
        self.memo: MemoStore | None = None
        """The app's cache, opened for the first cached call run here."""
        self.running: dict[str, int | asyncio.Task[Any]] = {}
        """Where each call runs (its lane thread's id, or its task): to say where a
        call that timed out was stuck."""

    # --- lifecycle -------------------------------------------------------------

    async def serve(self) -> None:
        sender = self.loop.create_task(self.replies.send_forever())
        self.channel.send(protocol.Ready(os.getpid()))
        try:
            while (frame := await self.channel.receive()) is not None:
                await self._on_frame(frame)
        finally:  # on every way out: the express user's connection is this executor's too
            await self.express.quiet()
            await self.app.close()
        await self.http.shutdown()
        await self.replies.settle(OFFERS_DRAIN_S)
        deadline = time.monotonic() + OFFERS_DRAIN_S
        while len(self.offers) and time.monotonic() < deadline:  # results not yet pulled
            await asyncio.sleep(0.01)
        sender.cancel()

    async def _on_frame(self, frame: protocol.FromAgent) -> None:
        match frame:
            case protocol.Run(inv=data, reply=reply):
                inv = protocol.Invocation.decode(data)
                self.express.known.add((inv.module, inv.qualname))
                self._accept(inv, reply)
            case protocol.Describe():
                self.channel.send(self.functions.describe(frame))
            case protocol.StackQuery(id=invocation_id):
                self.channel.send(protocol.Stack(invocation_id, self._stack_of(invocation_id)))
            case protocol.Load():
                await self._load(frame)
            case protocol.Quiet():
                await self.express.quiet()
                self.channel.send(protocol.Quieted())

    async def _load(self, load: protocol.Load) -> None:
        try:  # first: user code imported from here on may read its environment
            apply_settings(load.settings, load.secret_values)
        except Exception as exc:  # a secret is not set: the agent closes this executor
            self.channel.send(protocol.Loaded(error=not_prepared(exc)))
            return
        path = Path(load.path)
        sys.path.insert(0, str(path))
        if load.site_packages:
            use_environment(Path(load.site_packages))
        os.chdir(path)
        payload.BY_VALUE_MODULES.update(top_level_modules(path))
        own_app = self.app.open(load.express_creds)
        runtime.install(
            runtime.NodeRuntime(
                node_id=self.node_id,
                app=load.app,
                digest=load.digest,
                on_block=self._on_block,
                on_unblock=self._on_unblock,
                app_connection=self.app.get if own_app else None,
            )
        )
        self.outputs = capture(self._emit)
        if load.express:
            await self.express.open(load.key or load.digest, load.env, load.app)
        self.channel.send(protocol.Loaded())

    # --- running calls ---------------------------------------------------------------
    #
    # The agent sends sync calls ahead (its pipeline depth); lane threads run them
    # back to back, and what they send back leaves through the replies' one sender.

    def _accept(self, inv: protocol.Invocation, reply: str, announced: bool = False) -> None:
        self.in_flight += 1
        try:
            on_loop = is_async(self.functions.get(inv.module, inv.qualname))
        except BaseException:
            on_loop = True  # run it on the loop: _run reports the lookup failure
        if on_loop or inv.args.codec == protocol.CODEC_HTTP:
            if not announced:  # now, not through the replies: the call may block the loop
                self.channel.send(protocol.Start(inv.id))  # and the agent must time it
            self.loop.create_task(self._run(inv, reply, announced))
        else:
            self.lane.submit((inv, reply, announced))

    def _answered(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            end_strays()

    def _run_sync(self, job: SyncJob) -> None:
        """In a lane thread: run one sync call and hand its result to the loop."""
        inv, reply, announced = job
        if inv.remaining_s() <= 0:
            error = protocol.ErrorInfo(
                protocol.ERR_TIMEOUT,
                "DeadlineExceeded",
                f"{inv.app}.{inv.fn} waited past its caller's deadline",
            )
            self.replies.answer(
                reply, protocol.Result(inv.id, self.node_id, error=error), announced
            )
            return
        if not announced:
            self.replies.frame(protocol.Start(inv.id))
        started = time.perf_counter()
        with self._running(inv, threading.get_ident()):
            failure = self._prepared()
            if failure is not None:
                result = protocol.Result(inv.id, self.node_id, error=failure)
            else:
                result = self._call_sync(inv, reply)
        self._answer(inv, reply, result, started, announced)

    def _call_sync(self, inv: protocol.Invocation, reply: str) -> protocol.Result:
        try:
            raw = (
                inv.args.data
                if inv.args.blob is None
                else self._on_loop(payload.unwrap(self.nc, inv.args))
            )
            _keep_raw_args(inv, raw)
            with inputs.arriving() as futures:
                args, kwargs, refs = decode_args(raw or b"", inv.args.codec)
            ask = memo_writes.checked_ask(inv, args, kwargs)
            if refs:  # a slow one gives the slot back (one being made again needs one)
                args, kwargs = wait_in_lane(self.loop, self.refs.resolve(args, kwargs, refs))
            known = None
            if ask is not None:
                ask, known = self._on_loop(self._cached_inputs(inv, ask, refs, futures))
            if futures:
                args, kwargs = self._on_loop(inputs.resolve(self.nc, args, kwargs, futures, known))
            value = self.functions.get(inv.module, inv.qualname)(*args, **kwargs)
            data = _encode_result(inv, value)
            if ask is not None:
                self._on_loop(self._store(inv, ask, data))
            return protocol.Result(inv.id, self.node_id, value=self._payload(data, inv, reply))
        except BaseException as exc:  # report everything the user code raised
            return protocol.Result(inv.id, self.node_id, error=error_info(exc))

    def _prepared(self) -> protocol.ErrorInfo | None:
        """Off the loop, before a call: the start-up hooks not yet run here. A failure
        is every later call's too, and the agent is told to close this executor."""
        if not self.hooks.pending():
            return None
        failure = self.hooks.run()
        if failure is not None:
            self.replies.frame(protocol.Retire(failure))  # before the caller hears of it
        return failure

    async def _run(self, inv: protocol.Invocation, reply: str, announced: bool = False) -> None:
        """On the loop: async functions, HTTP requests for ASGI apps (and calls whose
        function could not be found)."""
        started = time.perf_counter()
        with self._running(inv, asyncio.current_task()):
            failure = await asyncio.to_thread(self._prepared) if self.hooks.pending() else None
            if failure is not None:
                result = protocol.Result(id=inv.id, node=self.node_id, error=failure)
            else:
                result = await self._call_async(inv, reply)
        self._answer(inv, reply, result, started, announced)

    async def _call_async(self, inv: protocol.Invocation, reply: str) -> protocol.Result:
        try:
            value, ask = await self._call(inv, reply)
            data = _encode_result(inv, value)
            if ask is not None:
                await self._store(inv, ask, data)
            if reply == self.replies.results_here:
                wrapped = await payload.wrap(self.nc, data, inv.args.codec)
            else:
                wrapped = payload.offer(self.offers, data, inv.args.codec, offers.RESULT_HOLD_S)
            return protocol.Result(id=inv.id, node=self.node_id, value=wrapped)
        except BaseException as exc:  # report everything the user code raised
            return protocol.Result(id=inv.id, node=self.node_id, error=error_info(exc))

    def _answer(
        self,
        inv: protocol.Invocation,
        reply: str,
        result: protocol.Result,
        started: float,
        express: bool = False,
    ) -> None:
        """A call ran: its result to ``reply``; if it raised, its traceback also goes to
        the app's log stream, so ``superpose logs`` shows why beside what it printed
        (an HTTP request's failure is logged by the ASGI runner, naming the request)."""
        result.duration_s = time.perf_counter() - started
        if result.error is not None and inv.args.codec != protocol.CODEC_HTTP:
            error = result.error
            message = error.message.strip().splitlines()
            summary = f"{error.type}: {message[0]}" if message else error.type
            self._log(inv.id, inv.app, inv.fn, protocol.LOG_ERROR, f"{summary}\n{error.traceback}")
        self.replies.answer(reply, result, express)

    async def _call(
        self, inv: protocol.Invocation, reply: str
    ) -> tuple[Any, protocol.MemoAsk | None]:
        """The call's value, and the key to store it under if it is a cached call's."""
        raw_args = await payload.unwrap(self.nc, inv.args)
        fn = self.functions.get(inv.module, inv.qualname)
        if inv.args.codec == protocol.CODEC_HTTP:
            return await self.http.serve(fn, inv, raw_args, reply), None
        _keep_raw_args(inv, raw_args)
        with inputs.arriving() as futures:
            args, kwargs, refs = decode_args(raw_args, inv.args.codec)
        ask = memo_writes.checked_ask(inv, args, kwargs)
        if refs:
            args, kwargs = await wait_on_loop(self.refs.resolve(args, kwargs, refs))
        known = None
        if ask is not None:
            ask, known = await self._cached_inputs(inv, ask, refs, futures)
        if futures:
            args, kwargs = await inputs.resolve(self.nc, args, kwargs, futures, known)
        return await fn(*args, **kwargs), ask

    async def _cached_inputs(
        self,
        inv: protocol.Invocation,
        ask: protocol.MemoAsk,
        refs: list[Ref],
        futures: list[inputs.Input],
    ) -> tuple[protocol.MemoAsk | None, dict[int, Any] | None]:
        """For a cached call whose key checked out: its cached inputs' values, read from
        the cache by their keys, and its key still, if its Refs' bytes are theirs and
        every cached input was found (``memo_writes``); else no key (nothing stored)."""
        if refs and not await memo_writes.refs_sound(self.refs, refs):
            return None, None
        if not any(found.memo_key for found in futures):
            return ask, None
        known = await memo_writes.cached_inputs(await self._memo(), inv, futures)
        return (ask, known) if known is not None else (None, None)

    async def _store(
        self, inv: protocol.Invocation, ask: protocol.MemoAsk, data: payload.Encoded
    ) -> None:
        await memo_writes.store(await self._memo(), inv, ask, data, self.node_id)

    async def _memo(self) -> MemoStore:
        """The app's cache, on the app user's connection (the executor's own user may
        touch no app's); on the node's own where the executor connects as the node."""
        if self.memo is None:
            nc = await self.app.get() if self.app.opened else self.nc
            results, claims = await memo_store.open_buckets(nc.jetstream())
            self.memo = MemoStore(results, claims, nc)
        return self.memo

    def _running(self, inv: protocol.Invocation, where: int | asyncio.Task[Any] | None) -> _Running:
        return _Running(self, inv, where)

    def _payload(
        self, data: payload.Encoded, inv: protocol.Invocation, reply: str
    ) -> protocol.Payload:
        """In a lane thread: a durable result is spilled to the object store (on the
        loop), a direct one offered to its caller."""
        if len(data) > SPILL_THRESHOLD_BYTES and reply == self.replies.results_here:
            spilled: protocol.Payload = self._on_loop(payload.wrap(self.nc, data, inv.args.codec))
            return spilled
        return payload.offer(self.offers, data, inv.args.codec, offers.RESULT_HOLD_S)

    def _on_loop(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    # --- what calls say while they run -------------------------------------------------

    def _on_block(self, invocation_id: str) -> None:
        """In the calling thread: a call waits on its children."""
        self.replies.frame(protocol.Block(invocation_id))
        if _in_lane_thread():
            self.lane.leave()

    def _on_unblock(self, invocation_id: str) -> None:
        if _in_lane_thread():
            self.lane.rejoin()
        self.replies.frame(protocol.Unblock(invocation_id))

    def _emit(self, stream_name: str, line: str) -> None:
        """A line the running call printed or logged: for the app's log stream, and for
        its caller if the caller shows remote output."""
        invocation = runtime.current_invocation.get()
        if invocation is None:
            return
        record = self._log(invocation.id, invocation.app, invocation.fn, stream_name, line)
        if invocation.ctx.log_to:
            self.replies.printed_line(invocation.id, invocation.ctx.log_to, record)
        copy_line(invocation.id, line)  # for a crash report, should we die before those go

    def _log(self, invocation_id: str, app: str, fn: str, stream_name: str, line: str) -> bytes:
        """One record for the app's log stream; returned for the caller's subject too."""
        record = protocol.LogRecord(
            app=app,
            fn=fn,
            node=self.node_id,
            invocation=invocation_id,
            stream=stream_name,
            line=line,
            ts=time.time(),
        ).encode()
        self.replies.printed_line(invocation_id, protocol.log_subject(app, fn), record)
        return record

    def _stack_of(self, invocation_id: str) -> str:
        """Where a running call is now, as a traceback from the user's function down
        (frames of the executor itself left out); empty if it is not running here."""
        where = self.running.get(invocation_id)
        if isinstance(where, int):
            frame = sys._current_frames().get(where)
            frames = traceback.extract_stack(frame) if frame is not None else []
            return user_frames(frames, __file__, "_call_sync")
        if where is not None:
            return user_frames(awaiting_frames(where.get_coro()), __file__, "_call")
        return ""


class _Running:
    """Around one call: what it runs on behalf of (``runtime.current_invocation``), where
    it runs, and its unfinished last line of output on the way out."""

    def __init__(
        self, executor: Executor, inv: protocol.Invocation, where: int | asyncio.Task[Any] | None
    ) -> None:
        self.executor, self.inv, self.where = executor, inv, where

    def __enter__(self) -> None:
        inv = self.inv
        idempotent = self.executor.functions.idempotent(inv.module, inv.qualname)
        self.token = runtime.current_invocation.set(
            runtime.Invocation(
                id=inv.id,
                app=inv.app,
                fn=inv.fn,
                ctx=inv.ctx,
                env=inv.env,
                call=inv,
                idempotent=idempotent,
            )
        )
        if self.where is not None:
            self.executor.running[inv.id] = self.where

    def __exit__(self, *exc_info: object) -> None:
        self.executor.running.pop(self.inv.id, None)
        for output in self.executor.outputs:  # while the line still knows its call
            output.flush_invocation(self.inv.id)
        runtime.current_invocation.reset(self.token)


def _keep_raw_args(inv: protocol.Invocation, raw: protocol.Buffer | None) -> None:
    """Offered arguments stay at hand while the call runs: an object it puts records
    them for lineage (its caller's offer dies with the caller)."""
    current = runtime.current_invocation.get()
    if inv.args.source is not None and current is not None and current.id == inv.id:
        current.raw_args = raw


def _in_lane_thread() -> bool:
    return threading.current_thread().name.startswith("sp-lane")


def _encode_result(inv: protocol.Invocation, value: Any) -> payload.Encoded:
    """A call's result for the wire; one that cannot be sent is the user's error, naming
    the function and the part of the value at fault (``SerializationError``)."""
    try:
        return payload.encode_value(value, inv.args.codec)
    except Exception as exc:
        what = f"the result of {inv.app}.{inv.fn}"
        raise payload.cannot_send(what, value, inv.args.codec, exc) from exc
