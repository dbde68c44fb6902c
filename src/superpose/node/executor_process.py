"""The agent's side of executor subprocesses: start, load, dispatch, watch, kill."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from superpose import protocol
from superpose.config import ENV_CREDS
from superpose.errors import how_it_ended
from superpose.node.channel import Channel
from superpose.node.executor_creds import ExecutorIdentities, identities_for
from superpose.node.fork import EXECUTOR_ENTRY, ForkedChild
from superpose.node.memory import watch_memory
from superpose.node.output import OutputTail
from superpose.node.sandbox import Confinement, Identity, descendant
from superpose.security.executor_identity import ExecutorCreds
from superpose.security.lookup import find_creds

log = logging.getLogger("superpose.node")

START_TIMEOUT_S = 30.0
QUIET_TIMEOUT_S = 2.0
QUIET_BEFORE_KILL_S = 0.1
"""How long a condemned executor gets to pass on express calls NATS already delivered
to it; a clean kill would lose them (their callers notice only after 10 s)."""
STACK_WAIT_S = 0.2
"""How long a timed-out call's executor gets to say where the call is stuck."""
OUTPUT_SETTLE_S = 0.5
"""After an executor exits, how long its last output may take to arrive (longer only
when a process it started still holds the pipe open)."""


class ExecutorDied(Exception):
    """The executor process ended while calls were in flight."""

    def __init__(self, kind: str, reason: str, output: str = "") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.output = output
        """The last lines the dead call printed, and the process wrote while it ran."""


class LoadFailed(Exception):
    """A call's function could not be made ready: loading its bundle failed (a secret not
    set), describing it failed in the executor (an import error, a missing name), or its
    environment could not be had (kind ``prepare``)."""

    def __init__(self, error: protocol.ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


Answer = TypeVar("Answer", bound=protocol.Frame)


@dataclass
class Call:
    id: str
    is_sync: bool
    memory_bytes: int | None
    done: asyncio.Future[bool]
    holds_slot: bool = True
    on_start: Callable[[], None] | None = None
    """Called when the executor begins the call (it may queue it first)."""
    started: bool = False
    output_since: int = 0
    """The executor's output line count when the call came: later untagged lines
    belong in its crash report."""


@dataclass
class ExecutorProcess:
    """One executor subprocess; neutral until ``load`` makes it host a bundle."""

    process: asyncio.subprocess.Process | ForkedChild
    channel: Channel[protocol.FromExecutor]
    on_block: Callable[[Call], None]
    on_unblock: Callable[[Call], None]
    digest: str | None = None
    app: str = ""
    """The app it was loaded for."""
    app_user: bool = False
    calls: dict[str, Call] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)
    kill_reason: tuple[str, str] | None = None
    quieted: bool = False
    """Asked to take no more express calls (once is enough: shutdown, then close)."""
    retired: protocol.ErrorInfo | None = None
    """Its start-up hook failed: it takes no new calls, and is closing."""
    on_took: Callable[[protocol.Took], None] | None = None
    """Told of each call a client sent straight here (express); the agent adopts it."""
    on_result: Callable[[bytes], None] | None = None
    """Given the encoded result of each durable call of this node's (it comes with its
    ``done`` frame, not over NATS)."""
    output: OutputTail = field(default_factory=lambda: OutputTail(None))
    """Its fds 1 and 2: logged, and the last lines kept for crash reports."""
    _waiters: dict[str, asyncio.Future[protocol.FromExecutor]] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None
    _pump: asyncio.Task[None] | None = None
    _output_closer: asyncio.StreamWriter | None = None
    """Closes a forked child's output socket if it is not read to its end."""
    _memory_watch: asyncio.Task[None] | None = None
    _closing: asyncio.Task[None] | None = None
    identity: Identity | None = None
    creds: ExecutorCreds | None = None
    """Its own NATS user's creds file, removed when it stops (``executor_creds.py``)."""
    """Its own user and private folder, when the node confines executors (sandbox.py)."""
    inner_pid: int = 0
    """The executor's own pid when ``process`` is a wrapper (bwrap); else 0."""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def watched_pid(self) -> int:
        """The process whose memory is the executor's."""
        return self.inner_pid or self.process.pid

    @property
    def alive(self) -> bool:
        """Running, and neither condemned nor retired: such an executor takes no new calls."""
        return self.process.returncode is None and self.kill_reason is None and not self.retired

    running_sync: int = 0
    """Sync calls sent here and not blocked on children (kept as a count: it is read per call)."""

    @classmethod
    async def start(
        cls,
        lattice: str,
        node_id: str,
        on_block: Callable[[Call], None],
        on_unblock: Callable[[Call], None],
        log_file: IO[bytes] | None,
        confinement: Confinement | None = None,
    ) -> ExecutorProcess:
        """Start an executor; with a ``confinement``, as a user of its own (sandbox.py)."""
        ours, theirs = socket.socketpair()
        argv = [sys.executable, "-m", EXECUTOR_ENTRY, "--fd", str(theirs.fileno())]
        argv += ["--lattice", lattice, "--node", node_id]
        creds = identities_for(lattice).mint()  # its own NATS user (executor_creds.py)
        if creds is not None:
            argv += ["--id", creds.executor_id]
        identity: Identity | None = None
        options: dict[str, Any] = {}
        if confinement is not None:
            identity = await confinement.claim()
            argv, options = confinement.command(argv, identity, creds.path if creds else None)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                **({"env": _executor_env(lattice, creds)} | options),
            )
        except BaseException:
            ours.close()
            ExecutorIdentities.discard(creds)
            if identity is not None:
                await identity.release()
            raise
        finally:
            theirs.close()
        assert process.stdout is not None
        return await cls.take_over(
            process, ours, on_block, on_unblock, process.stdout, log_file, identity, creds
        )

    @classmethod
    async def take_over(
        cls,
        process: asyncio.subprocess.Process | ForkedChild,
        ours: socket.socket,
        on_block: Callable[[Call], None],
        on_unblock: Callable[[Call], None],
        output: asyncio.StreamReader | None = None,
        log_file: IO[bytes] | None = None,
        identity: Identity | None = None,
        creds: ExecutorCreds | None = None,
    ) -> ExecutorProcess:
        """Take charge of a started executor process once it says it is ready. Its
        ``output`` (fds 1 and 2) is read from the pipe given, or a forked child's socket."""
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        channel = Channel(reader, writer, protocol.decode_from_executor)
        executor = cls(process, channel, on_block, on_unblock)
        executor.identity = identity
        executor.creds = creds or (process.creds if isinstance(process, ForkedChild) else None)
        executor.output = OutputTail(log_file)
        if output is None and isinstance(process, ForkedChild) and process.output is not None:
            output, closer = await asyncio.open_unix_connection(sock=process.output)
            executor._output_closer = closer
            process.output = None  # the transport owns the socket now, and closes it
        if output is not None:
            executor._pump = asyncio.create_task(executor.output.pump(output))
        try:
            ready = await asyncio.wait_for(executor.channel.receive(), START_TIMEOUT_S)
        except BaseException:  # timed out or cancelled: no process may outlive its start
            executor.kill()
            with contextlib.suppress(BaseException):  # reaped, so its transport is closed
                await asyncio.wait_for(executor.process.wait(), QUIET_TIMEOUT_S)
            executor._release()
            await executor._end_identity()
            raise
        if not isinstance(ready, protocol.Ready):
            with contextlib.suppress(TimeoutError):  # exiting: let it finish saying why
                await asyncio.wait_for(executor.process.wait(), OUTPUT_SETTLE_S)
            executor.kill()
            await executor._output_read(OUTPUT_SETTLE_S)
            executor._release()
            await executor._end_identity()
            raise ExecutorDied("internal", "executor process failed to start (see node log)")
        if identity is not None:  # under bwrap, the executor is bwrap's grandchild
            executor.inner_pid = descendant(process.pid)
        executor._reader = asyncio.create_task(executor._read())
        return executor

    async def _request(self, key: str, frame: protocol.Frame, answer: type[Answer]) -> Answer:
        """Send ``frame`` and wait for the ``answer`` frame the reader files under ``key``."""
        waiter: asyncio.Future[protocol.FromExecutor] = asyncio.get_running_loop().create_future()
        self._waiters[key] = waiter
        self.channel.send(frame)
        reply = await waiter
        assert isinstance(reply, answer)  # the key says what answers it
        return reply

    async def load(
        self,
        digest: str,
        path: str,
        app: str,
        *,
        express: bool = True,
        site_packages: str = "",
        env: str = "",
        key: str = "",
        settings: protocol.ExecutorSettings | None = None,
        secret_values: dict[str, str] | None = None,
        express_creds: str = "",
    ) -> None:
        """Collapse into the bundle; LoadFailed if it could not (a secret is not set)."""
        self.digest = digest
        self.app = app
        # With an app user it may touch ``app``'s state only, so it serves ``app``'s calls
        # only (``ExecutorPool.ready_executor``), even of a bundle other apps share.
        self.app_user = bool(express_creds)
        load = protocol.Load(
            digest,
            path,
            app,
            express,
            site_packages,
            env,
            key=key,
            settings=settings,
            secret_values=secret_values or {},
            express_creds=express_creds,
        )
        loaded = await self._request("load", load, protocol.Loaded)
        if loaded.error is not None:
            raise LoadFailed(loaded.error)

    async def describe(self, module: str, qualname: str) -> dict[str, Any]:
        key = f"describe:{module}:{qualname}"
        ask = protocol.Describe(key, module, qualname)
        reply = await self._request(key, ask, protocol.Described)
        if reply.error is not None:
            raise LoadFailed(reply.error)
        return reply.meta or {}

    def run(self, inv: bytes, reply: str, call: Call) -> None:
        self.adopt(call)
        self.channel.send(protocol.Run(inv, reply))

    def adopt(self, call: Call, *, started: bool = False) -> None:
        """Watch a call this executor runs: one sent now, or one it took by express
        (which has ``started`` already)."""
        self.calls[call.id] = call
        call.output_since = self.output.seq
        self.running_sync += call.is_sync
        self.last_used = time.monotonic()
        if call.memory_bytes and self._memory_watch is None:
            self._memory_watch = asyncio.create_task(watch_memory(self))
        if started:
            self._started(call)

    def _took(self, took: protocol.Took) -> None:
        """Report an express call to the agent. Whatever goes wrong there must not stop
        this reader: every later frame of this executor would go unread."""
        if self.on_took is None:
            return
        try:
            self.on_took(took)
        except Exception:  # the call still runs and answers its caller, unaccounted
            log.exception("could not account for an express call")

    def _started(self, call: Call) -> None:
        call.started = True
        if call.on_start is not None:
            call.on_start()

    async def stack_of(self, invocation_id: str, within_s: float = STACK_WAIT_S) -> str | None:
        """Where a call running here is now: a traceback ("" if it is not running here),
        or None if the executor does not answer (gone, or its event loop is stuck)."""
        ask = protocol.StackQuery(invocation_id)
        asked = self._request(f"stack:{invocation_id}", ask, protocol.Stack)
        try:
            reply = await asyncio.wait_for(asked, within_s)
        except (TimeoutError, ExecutorDied):
            return None
        return reply.stack

    async def quiet(self, within_s: float = QUIET_TIMEOUT_S) -> None:
        """Stop express calls; returns once the ones already delivered have been passed
        on, or after ``within_s`` (an event loop stuck in user code cannot answer)."""
        if self.digest is not None and self.process.returncode is None and not self.quieted:
            self.quieted = True  # a stuck loop must not cost the wait twice
            with contextlib.suppress(TimeoutError, ExecutorDied):
                asked = self._request("quiet", protocol.Quiet(), protocol.Quieted)
                await asyncio.wait_for(asked, within_s)

    async def _read(self) -> None:
        while (frame := await self.channel.receive()) is not None:
            match frame:
                case protocol.Loaded():
                    self._resolve("load", frame)
                case protocol.Described(key=key):
                    self._resolve(key, frame)
                case protocol.Took():
                    self._took(frame)
                case protocol.Quieted():
                    self._resolve("quiet", frame)
                case protocol.Stack(id=invocation_id):
                    self._resolve(f"stack:{invocation_id}", frame)
                case protocol.Retire(error=error):
                    self._retire(error)
                case protocol.Start() | protocol.Done() | protocol.Block() | protocol.Unblock():
                    call = self.calls.get(frame.id)
                    if call is not None:
                        self._on_call_frame(call, frame)
        await self._died()

    def _on_call_frame(
        self, call: Call, frame: protocol.Start | protocol.Done | protocol.Block | protocol.Unblock
    ) -> None:
        match frame:
            case protocol.Done(result=result, ok=ok):
                if result is not None and self.on_result is not None:
                    self.on_result(result)
                del self.calls[call.id]
                self.running_sync -= call.is_sync and call.holds_slot
                if not call.done.done():
                    call.done.set_result(ok)
            case protocol.Start():
                self._started(call)
            case protocol.Block() if call.holds_slot:
                self.running_sync -= call.is_sync
                self.on_block(call)
            case protocol.Unblock() if not call.holds_slot:
                self.running_sync += call.is_sync
                self.on_unblock(call)

    def _retire(self, error: protocol.ErrorInfo) -> None:
        """Its start-up hook failed: no call may run here any more. It answers those it
        holds with the hook's error; the next call gets a fresh executor."""
        if self.retired is None:
            self.retired = error
            log.info("executor %d retired: %s", self.pid, error.message.splitlines()[0])
            self._closing = asyncio.get_running_loop().create_task(self.close())

    def _resolve(self, key: str, frame: protocol.FromExecutor) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(frame)

    async def _died(self) -> None:
        code = await self.process.wait()
        await self._end_identity()  # the processes its calls left hold its output open
        await self._output_read(OUTPUT_SETTLE_S)
        if self.kill_reason is not None:
            kind, reason = self.kill_reason
        elif self.retired is not None:
            kind, reason = self.retired.kind, self.retired.message
        else:
            kind, reason = "crashed", f"executor process {how_it_ended(code)}"
        error = ExecutorDied(kind, reason)
        for call in self.calls.values():
            if not call.done.done():
                output = self.output.last_output(call.id, call.output_since)
                call.done.set_exception(ExecutorDied(kind, reason, output))
        self.calls.clear()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._waiters.clear()
        if self._memory_watch is not None:
            self._memory_watch.cancel()
        self._release()

    def condemn(self, reason: tuple[str, str]) -> asyncio.Task[None]:
        """Kill for a reason (a timeout, the memory limit, a cancel): at once for the
        agent, which sends it nothing more, and for the process after a quiet of at
        most QUIET_BEFORE_KILL_S (a sync call runs in a lane thread, so its event loop
        can still answer; a stuck loop just means the full wait)."""
        if self.kill_reason is None:
            self.kill_reason = reason
        return asyncio.get_running_loop().create_task(self._quiet_then_kill())

    async def _quiet_then_kill(self) -> None:
        await self.quiet(QUIET_BEFORE_KILL_S)
        self.kill()
        with contextlib.suppress(TimeoutError):  # dead, so its connection is going too
            await asyncio.wait_for(self.process.wait(), QUIET_TIMEOUT_S)

    def kill(self, reason: tuple[str, str] | None = None) -> None:
        if self.kill_reason is None:
            self.kill_reason = reason or ("crashed", "executor process was stopped")
        if self.process.returncode is None:
            self.process.kill()

    async def close(self, grace_s: float = QUIET_TIMEOUT_S) -> None:
        """Quiet, let calls taken meanwhile finish (up to ``grace_s``), then stop."""
        await self.quiet()
        deadline = time.monotonic() + grace_s
        while self.calls and self._running() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.channel.close()
        try:
            await asyncio.wait_for(self.process.wait(), 2.0)
        except TimeoutError:
            self.kill()
            await self.process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._output_read(OUTPUT_SETTLE_S)
        self._release()

    async def _end_identity(self) -> None:
        """The process is gone: end every process of its user, remove its folder."""
        identity, self.identity = self.identity, None
        if identity is not None:
            await identity.release()

    def _running(self) -> bool:
        return self.process.returncode is None and self.kill_reason is None

    def _release(self) -> None:
        """Close our ends of its channel and output, through their transports. Left to
        the garbage collector, a socket can be closed after its transport's fd number
        went to a new descriptor the event loop watches (another executor's channel);
        uvloop aborts the whole node when it next polls that descriptor."""
        self.channel.close()
        ExecutorIdentities.discard(self.creds)
        if self._pump is not None:  # a process it started may still hold the pipe
            self._pump.cancel()
        if self._output_closer is not None:
            self._output_closer.close()

    async def _output_read(self, within_s: float) -> None:
        """Until the pipe is drained: the process that wrote to it has exited, but its
        last lines may still be on their way to us."""
        if self._pump is not None:  # not wait_for: the pump may be cancelled meanwhile
            await asyncio.wait({self._pump}, timeout=within_s)


def _executor_env(lattice: str, own: ExecutorCreds | None) -> dict[str, str]:
    """The node's environment, with the executor's own credentials (or, with no signer
    beside the node's creds, those the node connects with)."""
    creds = own.path if own is not None else find_creds(lattice)
    return {**os.environ, **({ENV_CREDS: str(creds)} if creds is not None else {})}
