"""The executor subprocess: hosts one bundle and runs its functions.

Started neutral by the node agent (imports done, lattice connected), it
collapses into one bundle on ``load`` and stays that way until evicted. Sync
functions run in worker threads, async ones on the event loop. Results are
published straight to the caller's reply subject; the agent only hears
``done``, so big results never pass through it. What user code prints is
captured per invocation and published as log records.

Calls come from the agent over the channel, or, once the bundle is warm, straight
from clients on the bundle's express subject: an idle executor runs such a call at
once and tells the agent it ``took`` it (the agent then times, limits and reports it
as if it had sent it); a busy one passes it to the node queue group unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import importlib
import inspect
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import cloudpickle
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from superpose import protocol, runtime
from superpose.config import SPILL_THRESHOLD_BYTES
from superpose.errors import RemoteError, UserError
from superpose.lattice import offers, payload
from superpose.lattice.connection import connect
from superpose.lattice.offers import OfferGoneError, Offers
from superpose.node.channel import Channel
from superpose.node.executor.asgi import AsgiRunner
from superpose.node.executor.lane import SyncLane
from superpose.node.output import copy_line
from superpose.support import eventloop

OFFERS_DRAIN_S = 1.5
"""On stopping, how long to keep serving results their callers have not pulled yet
(the agent kills an executor that has not exited 2 s after its channel closed)."""
OUTPUT_FLUSH_S = 1
"""Seconds a durable call's result waits at most for its output to be flushed."""
INHERITED_KINDS = (protocol.ERR_CRASHED, protocol.ERR_INTERNAL)
"""Failure kinds a function's error takes from the nested call that caused it."""


class _Output:
    """Stands in for sys.stdout/sys.stderr: lines written during a call become log records."""

    def __init__(self, stream_name: str, real: TextIO, emit: Callable[[str, str], None]) -> None:
        self.stream_name = stream_name
        self.real = real
        self.emit = emit
        self._partial: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        invocation = runtime.current_invocation.get()
        if invocation is None:
            return self.real.write(text)
        with self._lock:
            buffered = self._partial.pop(invocation.id, "") + text
            *lines, rest = buffered.split("\n")
            if rest:
                self._partial[invocation.id] = rest
        for line in lines:
            self.emit(self.stream_name, line)
        return len(text)

    def flush_invocation(self, invocation_id: str) -> None:
        with self._lock:
            rest = self._partial.pop(invocation_id, "")
        if rest:
            self.emit(self.stream_name, rest)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


class _LogHandler(logging.Handler):
    def __init__(self, emit: Callable[[str, str], None]) -> None:
        super().__init__()
        self.emit_line = emit
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if runtime.current_invocation.get() is None:
            return
        self.emit_line("log", self.format(record))


class Executor:
    def __init__(
        self, nc: NATS, channel: Channel[protocol.FromAgent], node_id: str, offered: Offers
    ) -> None:
        self.nc = nc
        self.offers = offered
        """Big results of direct calls, until their callers have pulled them."""
        self.results_here = protocol.node_results_subject(node_id)
        """Durable results for this node's agent: sent with their ``done`` frame."""
        self.channel = channel
        self.node_id = node_id
        self.loop = asyncio.get_running_loop()
        self.functions: dict[tuple[str, str], Callable[..., Any]] = {}
        self.app = ""
        self.digest = ""
        self.outputs: list[_Output] = []
        self.lane = SyncLane(self._run_sync)
        self.http = AsgiRunner(nc)
        self._events: deque[protocol.Frame | tuple[str, protocol.Result]] = deque()
        """What lane threads tell the loop, in order: frames for the agent (start,
        block, unblock), and (reply, result) pairs to answer."""
        self._wake_scheduled = False
        self.in_flight = 0
        """Calls accepted and not yet answered, from either source."""
        self.express: Subscription | None = None
        self.express_ok: set[tuple[str, str]] = set()
        """Functions the agent has sent here: it knows their limits, so it can adopt
        an express call of them after the fact."""
        self.printed: set[str] = set()
        """Calls that have printed (a durable one's output is flushed before its result)."""
        self.running: dict[str, int | asyncio.Task[Any]] = {}
        """Where each call runs (its lane thread's id, or its task): to say where a
        call that timed out was stuck."""

    # --- lifecycle -------------------------------------------------------------

    async def serve(self) -> None:
        self.channel.send(protocol.Ready(os.getpid()))
        while (frame := await self.channel.receive()) is not None:
            match frame:
                case protocol.Run(inv=data, reply=reply):
                    inv = protocol.Invocation.decode(data)
                    self.express_ok.add((inv.module, inv.qualname))
                    self._accept(inv, reply)
                case protocol.Describe():
                    self._describe(frame)
                case protocol.StackQuery(id=invocation_id):
                    self.channel.send(protocol.Stack(invocation_id, self._stack_of(invocation_id)))
                case protocol.Load():
                    await self._load(frame)
                case protocol.Quiet():
                    await self._quiet()
                    self.channel.send(protocol.Quieted())
        await self._quiet()
        await self.http.shutdown()
        deadline = time.monotonic() + OFFERS_DRAIN_S
        while len(self.offers) and time.monotonic() < deadline:  # results not yet pulled
            await asyncio.sleep(0.01)

    async def _load(self, load: protocol.Load) -> None:
        path = Path(load.path)
        self.app, self.digest = load.app, load.digest
        sys.path.insert(0, str(path))
        os.chdir(path)
        payload.BY_VALUE_MODULES.update(_top_level_modules(path))
        runtime.install(
            runtime.NodeRuntime(
                node_id=self.node_id,
                app=self.app,
                digest=self.digest,
                on_block=self._on_block,
                on_unblock=self._on_unblock,
            )
        )
        self._capture_output()
        if load.express:
            self.express = await self.nc.subscribe(
                protocol.express_wildcard(self.digest),
                queue=protocol.EXPRESS_QUEUE_GROUP,
                cb=self._on_express,
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )
        self.channel.send(protocol.Loaded())

    async def _on_express(self, msg: Msg) -> None:
        """A client sent this call here directly: run it now if idle, else pass it on."""
        if self.in_flight == 0 and self.express is not None:
            try:
                inv = protocol.Invocation.decode(msg.data)
            except Exception:  # the agent that gets it answers with the decode error
                inv = None
            if inv is not None and (inv.module, inv.qualname) in self.express_ok:
                # Taken only when idle, so it starts now: "took" is also its "start".
                # Written at once: if the call kills this process, the agent must know
                # of it to tell its caller.
                self.channel.send(protocol.Took(msg.data, msg.reply), now=True)
                self._accept(inv, msg.reply, announced=True)
                return
        subject = protocol.call_subject_of_express(msg.subject)
        await self.nc.publish(subject, msg.data, reply=msg.reply)

    async def _quiet(self) -> None:
        """Take no more express calls (eviction, shutdown); ones already delivered are
        passed to the queue group, so none is lost."""
        express, self.express = self.express, None
        if express is not None:
            with contextlib.suppress(Exception):  # connection gone: nothing more can arrive
                await express.drain()  # type: ignore[no-untyped-call]

    def _capture_output(self) -> None:
        out = _Output("stdout", sys.stdout, self._emit)
        err = _Output("stderr", sys.stderr, self._emit)
        self.outputs = [out, err]
        sys.stdout, sys.stderr = out, err
        root = logging.getLogger()
        root.addHandler(_LogHandler(self._emit))
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)

    # --- the sync lane -------------------------------------------------------------
    #
    # The agent sends sync calls ahead (its pipeline depth); lane threads run them
    # back to back and hand results to the loop in batches, one wake-up per batch.

    def _accept(self, inv: protocol.Invocation, reply: str, announced: bool = False) -> None:
        self.in_flight += 1
        try:
            is_async = _is_async(self._function(inv.module, inv.qualname))
        except BaseException:
            is_async = True  # run it on the loop: _run reports the lookup failure
        if is_async or inv.args.codec == protocol.CODEC_HTTP:
            if not announced:
                self.channel.send(protocol.Start(inv.id))
            self.loop.create_task(self._run(inv, reply))
        else:
            self.lane.submit((inv, reply, announced))

    def _run_sync(self, job: tuple[protocol.Invocation, str, bool]) -> None:
        """In a lane thread: run one sync call and hand its result to the loop."""
        inv, reply, announced = job
        if inv.remaining_s() <= 0:
            error = protocol.ErrorInfo(
                protocol.ERR_TIMEOUT,
                "DeadlineExceeded",
                f"{inv.app}.{inv.fn} waited past its caller's deadline",
            )
            self._tell_loop((reply, protocol.Result(inv.id, self.node_id, error=error)))
            return
        if not announced:
            self._tell_loop(protocol.Start(inv.id))
        started = time.perf_counter()
        token = runtime.current_invocation.set(
            runtime.Invocation(id=inv.id, app=inv.app, fn=inv.fn, ctx=inv.ctx)
        )
        self.running[inv.id] = threading.get_ident()
        try:
            raw = (
                inv.args.data
                if inv.args.blob is None
                else self._on_loop(payload.unwrap(self.nc, inv.args))
            )
            args, kwargs = payload.decode_args(raw or b"", inv.args.codec)
            value = self._function(inv.module, inv.qualname)(*args, **kwargs)
            data = payload.encode_value(value, inv.args.codec)
            result = protocol.Result(inv.id, self.node_id, value=self._payload(data, inv, reply))
        except BaseException as exc:  # report everything the user code raised
            result = protocol.Result(inv.id, self.node_id, error=_error_info(exc))
        finally:
            del self.running[inv.id]
            runtime.current_invocation.reset(token)
            for output in self.outputs:
                output.flush_invocation(inv.id)
        result.duration_s = time.perf_counter() - started
        self._tell_loop((reply, result))

    def _payload(self, data: bytes, inv: protocol.Invocation, reply: str) -> protocol.Payload:
        """In a lane thread: a durable result is spilled to the object store (on the
        loop), a direct one offered to its caller."""
        if len(data) > SPILL_THRESHOLD_BYTES and reply == self.results_here:
            spilled: protocol.Payload = self._on_loop(payload.wrap(self.nc, data, inv.args.codec))
            return spilled
        return payload.offer(self.offers, data, inv.args.codec, offers.RESULT_HOLD_S)

    def _on_loop(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def _tell_loop(self, event: protocol.Frame | tuple[str, protocol.Result]) -> None:
        self._events.append(event)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self.loop.call_soon_threadsafe(self._drain_events)

    def _drain_events(self) -> None:
        self._wake_scheduled = False
        results: list[tuple[str, protocol.Result]] = []
        while self._events:
            event = self._events.popleft()
            if isinstance(event, tuple):
                results.append(event)
            else:
                self.channel.send(event)
        if results:
            self.loop.create_task(self._answer_all(results))

    async def _answer_all(self, results: list[tuple[str, protocol.Result]]) -> None:
        for reply, result in results:
            self.in_flight -= 1
            done = protocol.Done(result.id, ok=result.error is None)
            printed = result.id in self.printed
            self.printed.discard(result.id)
            if reply == self.results_here:  # for our own agent: no trip through NATS
                if printed:  # its output reaches the caller before the agent's notice
                    await self._flush_output()
                done.result = result.encode()
            elif reply:
                await self.nc.publish(reply, result.encode())
            self.channel.send(done)

    async def _flush_output(self) -> None:
        """Until the server has routed what we published (one round trip): the lines a
        durable call printed, before its result goes to the agent on another path."""
        with contextlib.suppress(Exception):  # late output is better than a late result
            await self.nc.flush(timeout=OUTPUT_FLUSH_S)

    def _on_block(self, invocation_id: str) -> None:
        """In the calling thread: a call waits on its children."""
        self._tell_loop(protocol.Block(invocation_id))
        if _in_lane_thread():
            self.lane.leave()

    def _on_unblock(self, invocation_id: str) -> None:
        if _in_lane_thread():
            self.lane.rejoin()
        self._tell_loop(protocol.Unblock(invocation_id))

    # --- logs ------------------------------------------------------------------

    def _emit(self, stream_name: str, line: str) -> None:
        invocation = runtime.current_invocation.get()
        if invocation is None:
            return
        record = protocol.LogRecord(
            app=invocation.app,
            fn=invocation.fn,
            node=self.node_id,
            invocation=invocation.id,
            stream=stream_name,
            line=line,
            ts=time.time(),
        ).encode()
        subjects = [protocol.log_subject(invocation.app, invocation.fn)]
        if invocation.ctx.log_to:
            subjects.append(invocation.ctx.log_to)
        for subject in subjects:
            self._publish_threadsafe(subject, record)
        copy_line(invocation.id, line)  # for a crash report, should we die before those go
        self.printed.add(invocation.id)

    def _publish_threadsafe(self, subject: str, data: bytes) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.loop.create_task(self.nc.publish(subject, data))
        else:
            asyncio.run_coroutine_threadsafe(self.nc.publish(subject, data), self.loop)

    def _stack_of(self, invocation_id: str) -> str:
        """Where a running call is now, as a traceback from the user's function down
        (frames of the executor itself left out); empty if it is not running here."""
        where = self.running.get(invocation_id)
        if isinstance(where, int):
            frame = sys._current_frames().get(where)
            frames = traceback.extract_stack(frame) if frame is not None else []
            entry = "_run_sync"
        elif where is not None:
            frames = _awaiting_frames(where.get_coro())
            entry = "_call"
        else:
            return ""
        ours = [i for i, f in enumerate(frames) if f.filename == __file__ and f.name == entry]
        if ours:
            frames = frames[ours[-1] + 1 :]
        return "".join(traceback.format_list(frames))

    # --- functions -------------------------------------------------------------

    def _function(self, module: str, qualname: str) -> Callable[..., Any]:
        key = (module, qualname)
        found = self.functions.get(key)
        if found is None:
            target: Any = _import_bundle_module(module)
            for part in qualname.split("."):
                if not hasattr(target, part):
                    raise FunctionNotFound(f"{module} has no function {qualname!r}")
                target = getattr(target, part)
            found = getattr(target, "local", target)
            if not callable(found):
                raise TypeError(f"{module}.{qualname} is not callable")
            cloudpickle.register_pickle_by_value(sys.modules[module])
            self.functions[key] = found
        return found

    def _describe(self, ask: protocol.Describe) -> None:
        reply = protocol.Described(ask.key)
        try:
            fn = self._function(ask.module, ask.qualname)
            wrapper = _wrapper_of(ask.module, ask.qualname)
            reply.meta = {
                "is_async": _is_async(fn),
                **(wrapper.node_options() if wrapper is not None else {}),
            }
        except BaseException as exc:
            reply.error = _error_info(exc, _load_error_kind(exc))
        self.channel.send(reply)

    async def _run(self, inv: protocol.Invocation, reply: str) -> None:
        started = time.perf_counter()
        token = runtime.current_invocation.set(
            runtime.Invocation(id=inv.id, app=inv.app, fn=inv.fn, ctx=inv.ctx)
        )
        task = asyncio.current_task()
        if task is not None:
            self.running[inv.id] = task
        try:
            value = await self._call(inv, reply)
            data = payload.encode_value(value, inv.args.codec)
            if reply == self.results_here:
                wrapped = await payload.wrap(self.nc, data, inv.args.codec)
            else:
                wrapped = payload.offer(self.offers, data, inv.args.codec, offers.RESULT_HOLD_S)
            result = protocol.Result(id=inv.id, node=self.node_id, value=wrapped)
        except BaseException as exc:  # report everything the user code raised
            result = protocol.Result(id=inv.id, node=self.node_id, error=_error_info(exc))
        finally:
            self.running.pop(inv.id, None)
            runtime.current_invocation.reset(token)
            for output in self.outputs:
                output.flush_invocation(inv.id)
        result.duration_s = time.perf_counter() - started
        await self._answer_all([(reply, result)])

    async def _call(self, inv: protocol.Invocation, reply: str) -> Any:
        """Async functions, HTTP requests for ASGI apps (and calls whose function could
        not be found)."""
        raw_args = await payload.unwrap(self.nc, inv.args)
        fn = self._function(inv.module, inv.qualname)
        if inv.args.codec == protocol.CODEC_HTTP:
            return await self.http.serve(fn, inv, raw_args, reply)
        args, kwargs = payload.decode_args(raw_args, inv.args.codec)
        return await fn(*args, **kwargs)


def _awaiting_frames(coro: Any) -> list[traceback.FrameSummary]:
    """A suspended coroutine's frames, down the chain of what each one awaits
    (``Task.get_stack`` gives only the outermost)."""
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return list(traceback.StackSummary.extract(iter(frames)))


def _is_async(fn: Any) -> bool:
    """Async functions, and objects whose ``__call__`` is async: ASGI apps like FastAPI's
    run on the loop too, where the agent counts them against ``concurrency``, not slots."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _in_lane_thread() -> bool:
    return threading.current_thread().name.startswith("sp-lane")


def _top_level_modules(root: Path) -> set[bytes]:
    names = {p.stem for p in root.glob("*.py")} | {
        p.parent.name for p in root.glob("*/__init__.py")
    }
    return {name.encode() for name in names}


def _wrapper_of(module: str, qualname: str) -> Any:
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target if hasattr(target, "node_options") else None


class FunctionNotFound(LookupError):
    """The bundle lacks the module or name an invocation asks for."""


def _import_bundle_module(module: str) -> Any:
    """Import a module of the bundle; only its own absence counts as "not found".

    A ModuleNotFoundError raised by the module's own imports (a dependency the
    node lacks) is the user's error and is reported as raised, with its traceback.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise FunctionNotFound(f"the bundle has no module {module!r}") from exc
        raise
    except UserError as exc:  # e.g. a script's driver code running on import
        raise UserError(
            f"importing {module} on a node made superpose calls ({exc.message}); code that "
            'drives a script belongs under `if __name__ == "__main__":`'
        ) from exc


def _load_error_kind(exc: BaseException) -> str:
    return protocol.ERR_NOT_FOUND if isinstance(exc, FunctionNotFound) else protocol.ERR_RAISED


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the first frame of user code on: superpose's own frames are noise."""
    tb = exc.__traceback__
    while tb is not None and _is_runtime_frame(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def _is_runtime_frame(filename: str) -> bool:
    return filename.startswith(_RUNTIME_DIRS) or "<frozen " in filename


_RUNTIME_DIRS = (
    str(Path(__file__).resolve().parents[2]),  # the superpose package
    str(Path(asyncio.__file__).resolve().parents[1]),
)


def _error_info(exc: BaseException, kind: str = protocol.ERR_RAISED) -> protocol.ErrorInfo:
    if isinstance(exc, RemoteError) and exc.kind in INHERITED_KINDS:
        # A nested call died with its node: the caller failed for the same reason, so
        # a retry at any level of the call tree applies (it reruns the whole subtree).
        kind = exc.kind
    elif isinstance(exc, OfferGoneError):  # a payload could not be pulled: not the user's
        kind = protocol.ERR_INTERNAL
    return protocol.ErrorInfo(
        kind=kind,
        type=_type_name(type(exc)),
        message=str(exc),
        traceback=_user_traceback(exc),
        types=[_type_name(c) for c in type(exc).__mro__ if c not in (object, BaseException)],
    )


def _type_name(cls: type) -> str:
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


async def _main(fd: int, lattice: str, node_id: str, open_caller: runtime.CallerOpener) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    nc = await connect(lattice, name=f"superpose-executor-{node_id}-{os.getpid()}")
    # While still neutral: opening the client user code calls through (asset lookups,
    # its subscriptions) cost 35-55 ms, which a bundle's first call would otherwise wait for.
    await open_caller(nc)
    offered = Offers(nc, uuid.uuid4().hex[:16])
    await nc.subscribe(
        offered.subject, cb=offered.serve, pending_msgs_limit=-1, pending_bytes_limit=-1
    )
    channel = Channel(reader, writer, protocol.decode_from_agent)
    executor = Executor(nc, channel, node_id, offered)
    try:
        await executor.serve()
    finally:
        await nc.close()
        executor.channel.close()


def serve_forever(fd: int, lattice: str, node_id: str, open_caller: runtime.CallerOpener) -> None:
    """Be an executor on the agent's socket ``fd`` until the agent closes it; never returns.

    ``open_caller`` opens the client that user code's nested calls go through.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when executors stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A fatal signal's Python stack (of the thread it hit) goes to the crash report.
    faulthandler.enable(all_threads=False)
    eventloop.run(_main(fd, lattice, node_id, open_caller))
    os._exit(0)  # worker threads of abandoned calls must not keep the process alive
