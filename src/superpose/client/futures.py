"""Futures of invocations: ``concurrent.futures.Future`` that are also awaitable."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import Callable, Generator
from typing import Any

from superpose import protocol, runtime
from superpose.errors import SuperposeError, UserError
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

    def __init__(self) -> None:
        super().__init__()
        self.accepted = threading.Event()
        """Set once the lattice has persisted a durable invocation (it will not be lost)."""

    def cancel(self) -> bool:
        """Cancel the invocation: dropped if queued, killed if running; False if finished."""
        cancelled = super().cancel()
        if cancelled and self.on_cancel is not None:
            self.on_cancel(self)
        return cancelled

    def result(self, timeout: float | None = None) -> Any:
        if self.done():
            return super().result(0)
        _refuse_on_event_loop()
        with runtime.blocking():
            return super().result(timeout)

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()


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


def gather(*futures: concurrent.futures.Future[Any]) -> list[Any]:
    """Results of all futures, in order; the first failure is raised."""
    pending = [f for f in futures if not f.done()]
    if pending:
        _refuse_on_event_loop()
        with runtime.blocking():
            concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_EXCEPTION)
    return [concurrent.futures.Future.result(f) for f in futures]


def fail(future: concurrent.futures.Future[Any], error: BaseException) -> None:
    """Fail a future unless it already has its outcome (results can race a timeout)."""
    if not future.done():
        future.set_exception(error)


def succeed(
    future: concurrent.futures.Future[Any], codec: str, data: bytes | bytearray | None
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
