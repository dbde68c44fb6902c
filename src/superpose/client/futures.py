"""Futures of invocations: ``concurrent.futures.Future`` that are also awaitable."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import weakref
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator
from typing import Any

from superpose import protocol, runtime
from superpose.client import threads
from superpose.client.progress import progress_bar
from superpose.errors import RemoteError, SuperposeError, UserError, raised_remotely
from superpose.lattice import payload


class Future(concurrent.futures.Future[Any]):
    """The result of a spawned invocation.

    Waiting on it inside a function running on a node frees that function's
    slot until the wait is over, so recursive fan-out cannot deadlock.
    """

    invocation_id: str = ""
    idempotency_key: str | None = None
    on_cancel: Callable[[Future], None] | None = None
    """Set for durable invocations: cancelling the future cancels the work on the lattice."""
    cached: bool = False
    """True when a ``cache=True`` call's result came from the cache: nothing ran."""
    result_payload: protocol.Payload | None = None
    """A durable result as its notification carried it: what a dependent call is sent
    in this future's place (``client/dataflow.py``), so its bytes never come here."""
    memo_key: str | None = None
    """A ``cache=True`` call's key (``client/memo.py``): a cached call taking this
    future as an argument hashes it by this key, not by a value it may not have yet."""
    lazy_ok: bool = False
    """Set when this future feeds a dependent: a big result is then fetched only when
    ``result()`` or ``await`` asks for it, never just because it finished."""
    _lazy: Callable[[], Coroutine[Any, Any, Any]] | None = None
    _lazy_loop: asyncio.AbstractEventLoop | None = None

    def __init__(self) -> None:
        super().__init__()
        self.accepted = threading.Event()
        """Set once the lattice has persisted a durable invocation (it will not be lost)."""
        self._fetch_lock = threading.Lock()

    def cancel(self) -> bool:
        """Cancel the invocation: dropped if queued, killed if running; False if finished."""
        cancelled = super().cancel()
        if cancelled and self.on_cancel is not None:
            self.on_cancel(self)
        return cancelled

    def result(self, timeout: float | None = None) -> Any:
        if self.done():
            return self._value(super().result(0))
        _refuse_on_event_loop()
        with runtime.blocking():
            return self._value(super().result(timeout))

    def __await__(self) -> Generator[Any, None, Any]:
        if not self.lazy_ok:
            return asyncio.wrap_future(self).__await__()
        return self._awaited().__await__()

    def __reduce__(self) -> tuple[Any, ...]:
        """Only a call's arguments may hold a Future (``client/dataflow.py`` encodes it
        as a pointer to its result); anywhere else it cannot travel."""
        send = SENDING.get()
        if send is None:
            raise TypeError(
                "a Future can be sent only as an argument of a call (.spawn, .remote, .map)"
            )
        return send(self)

    def settle_lazily(
        self, result: protocol.Payload, loop: asyncio.AbstractEventLoop, fetch: Fetch
    ) -> None:
        """Finish with a result whose bytes stay where they are until asked for."""
        self.result_payload = result
        self._lazy = fetch
        self._lazy_loop = loop
        if not self.done():
            self.set_result(_LAZY)

    def adopt(self, source: Future) -> None:
        """End as ``source`` ended, a lazy result staying lazy (a dependent's future
        takes the outcome of the invocation sent for it)."""
        if self.done():
            return
        if source.cancelled():
            self.on_cancel = None
            self.cancel()
            return
        error = source.exception(0)
        if error is not None:
            self.set_exception(error)
            return
        self.result_payload = source.result_payload
        self._lazy, self._lazy_loop = source._lazy, source._lazy_loop
        self.set_result(concurrent.futures.Future.result(source, 0))

    def _value(self, raw: Any) -> Any:
        """The value for a finished result: a lazy one fetched (once) from here."""
        if raw is not _LAZY:
            return raw
        assert self._lazy is not None and self._lazy_loop is not None
        with self._fetch_lock:  # one fetch, even when several threads ask at once
            if self._fetched is _LAZY:
                self._fetched = threads.run(self._lazy_loop, self._lazy())
            return self._fetched

    async def _awaited(self) -> Any:
        """``await`` of a future that may finish lazily: the fetch runs on its loop."""
        raw = await settled(self)
        if raw is not _LAZY:
            return raw
        assert self._lazy is not None and self._lazy_loop is not None
        if self._fetched is _LAZY:
            if asyncio.get_running_loop() is self._lazy_loop:
                value = await self._lazy()
            else:
                running = asyncio.run_coroutine_threadsafe(self._lazy(), self._lazy_loop)
                value = await asyncio.wrap_future(running)
            self._fetched = value
        return self._fetched

    _fetched: Any = None


Fetch = Callable[[], Coroutine[Any, Any, Any]]


class _Lazy:
    """A finished future's result not fetched yet."""

    def __repr__(self) -> str:
        return "<not fetched>"


_LAZY: Any = _Lazy()
Future._fetched = _LAZY


class _RawView(concurrent.futures.Future[Any]):
    """A future's raw outcome (a lazy result unfetched), for ``asyncio.wrap_future``,
    which reads its source's ``result()`` on the loop, where no fetch may block."""

    def __init__(self, source: Future) -> None:
        super().__init__()
        source.add_done_callback(self._copy)

    def _copy(self, source: concurrent.futures.Future[Any]) -> None:
        if source.cancelled():
            self.cancel()
        elif source.exception(0) is not None:
            self.set_exception(source.exception(0))
        else:
            self.set_result(concurrent.futures.Future.result(source, 0))


def settled(future: Future) -> asyncio.Future[Any]:
    """Awaitable on the running loop: ``future``'s end (raising as it failed), a lazy
    result left unfetched (``await future`` would fetch it)."""
    return asyncio.wrap_future(_RawView(future))


SENDING: contextvars.ContextVar[Callable[[Future], tuple[Any, ...]] | None] = (
    contextvars.ContextVar("superpose_futures_sending", default=None)
)
"""How a Future among a call's arguments is pickled, while ``client/dataflow.py``
encodes them (unset: a Future cannot be sent)."""


SERVING_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
"""The loops clients receive results on (each ``Client`` adds its own)."""


def _refuse_on_event_loop() -> None:
    """Blocking the loop a result arrives on would freeze it: an async function on a
    node, async code with a client of its own. Another loop may block, as in a Jupyter
    notebook, whose kernel runs every cell inside its loop."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return
    if running not in SERVING_LOOPS:
        return
    raise UserError(
        "a blocking superpose call was made inside async code; "
        "use `await f.remote.aio(...)`, `await f.spawn(...)` or `await future`"
    )


FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED
FIRST_EXCEPTION = concurrent.futures.FIRST_EXCEPTION
ALL_COMPLETED = concurrent.futures.ALL_COMPLETED


def gather(
    *futures: concurrent.futures.Future[Any],
    return_exceptions: bool = False,
    progress: bool = True,
) -> list[Any]:
    """Results of all futures, in order. The first failure is raised, or, with
    ``return_exceptions=True``, each failure is returned in its future's place (as
    ``asyncio.gather`` does). A progress bar shows while someone watches (a terminal or
    a notebook) unless ``progress=False``."""
    pending = {f for f in futures if not f.done()}
    if pending and (return_exceptions or not any(_failed(f) for f in futures if f.done())):
        _refuse_on_event_loop()
        with progress_bar(len(futures), "gather", enabled=progress) as advance:
            for _ in range(len(futures) - len(pending)):
                advance()
            with runtime.blocking():
                while pending:
                    done, pending = concurrent.futures.wait(
                        pending, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for future in done:
                        advance()
                        if not return_exceptions and _failed(future):
                            outcome(future, return_exceptions=False)  # raises its error
    if not return_exceptions:  # a failure raises even while futures before it still run
        for future in futures:
            if future.done() and _failed(future):
                outcome(future, return_exceptions=False)
    return [outcome(f, return_exceptions) for f in futures]


def wait(
    futures: Iterable[concurrent.futures.Future[Any]],
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
) -> concurrent.futures._base.DoneAndNotDoneFutures[Any]:
    """``concurrent.futures.wait``: (done, not_done) once ``return_when`` holds or
    ``timeout`` passes. On a node, the waiting function's slot is free meanwhile."""
    _refuse_on_event_loop()
    with runtime.blocking():
        return concurrent.futures.wait(futures, timeout, return_when)


def as_completed(
    futures: Iterable[concurrent.futures.Future[Any]], timeout: float | None = None
) -> Iterator[concurrent.futures.Future[Any]]:
    """``concurrent.futures.as_completed``: each future as it finishes; ``TimeoutError``
    if ``timeout`` passes first. On a node, the slot is free while it waits."""
    _refuse_on_event_loop()
    finished = concurrent.futures.as_completed(futures, timeout)
    while True:
        with runtime.blocking():
            future = next(finished, None)
        if future is None:
            return
        yield future


def outcome(future: concurrent.futures.Future[Any], return_exceptions: bool) -> Any:
    """A finished future's result; its exception raised, or returned if asked."""
    if return_exceptions:
        if future.cancelled():
            return concurrent.futures.CancelledError()
        error = future.exception(0)
        if error is not None:
            return error
    if isinstance(future, Future):
        return future.result(0)  # a lazy result is fetched here
    return concurrent.futures.Future.result(future, 0)


def _failed(future: concurrent.futures.Future[Any]) -> bool:
    return future.cancelled() or future.exception(0) is not None


def fail(future: concurrent.futures.Future[Any], error: BaseException) -> None:
    """Fail a future unless it already has its outcome (results can race a timeout)."""
    if not future.done():
        future.set_exception(error)


def remote_error(info: protocol.ErrorInfo, node: str) -> RemoteError:
    """A failed invocation's error as the caller raises it: the function's own exception
    class when it can be rebuilt here (``payload.decode_exception``), else a RemoteError."""
    error = RemoteError.from_info(info, node)
    if not info.exception:
        return error
    parts = payload.decode_exception(info.exception)
    if parts is None:
        return error
    try:
        return raised_remotely(*parts, error)
    except Exception:  # a class that cannot be combined or rebuilt: the plain report
        return error


def succeed(
    future: concurrent.futures.Future[Any], codec: str, data: protocol.Buffer | None
) -> None:
    """Resolve a future with a result's decoded value (JSON stays bytes, for the
    gateway and the CLI), unless it already has its outcome. Given as its bytes, not a
    Payload: a pulled one is a bytearray (copying 50 MB into bytes costs 25 ms)."""
    if future.done():
        return
    try:
        data = data or b""
        decoded: Any = data if codec == protocol.CODEC_JSON else payload.decode_value(data, codec)
    except Exception as exc:
        fail(future, SuperposeError(f"cannot decode the result: {exc}"))
        return
    future.set_result(decoded)
