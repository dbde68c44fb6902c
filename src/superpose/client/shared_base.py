"""What Dict and Queue share: the client they go through, the sync and ``.aio`` forms
of each method, and values pickled within the size limit.

A method written once as a coroutine serves both forms, as ``f.remote`` does:
``d.incr("k")`` waits for it on the client's loop, ``await d.incr.aio("k")`` awaits it
from async code (on the client's own loop, inside a function, or any other).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

from superpose import protocol, runtime
from superpose.client import app_state, session
from superpose.errors import BadRequestError, UserError
from superpose.lattice import payload
from superpose.support.eventloop import on_loop

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from superpose.client.client import Client

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Shared:
    """A handle on something of the lattice's, used through the process's client."""

    _client: Client | None = None

    def client(self) -> Client:
        """The client of this process (inside a function, the executor's)."""
        if self._client is None:
            self._client = session.current_client()
        return self._client

    label = "a shared handle"
    scope = protocol.SHARED_SCOPE

    async def connection(self) -> NATS:
        """The connection this handle's scope is used over: inside a function, an app's
        own dicts and queues go over its executor's app user (``app_state``)."""
        return await app_state.connection_for(self.client(), self.scope, self.label)

    def run(self, coro: Coroutine[Any, Any, T], method: str = "get") -> T:
        """Wait for ``coro`` on the client's loop; refused on that loop itself (async code
        inside a function), naming the ``.aio`` form to await instead. Inside a function
        a long wait (a queue's ``get``) gives the call's slot back meanwhile, as waiting
        on a nested call does: the producer it waits for may need that slot."""
        client = self.client()
        if on_loop(client.loop):
            coro.close()
            raise UserError(
                f"{self.label}: a blocking call in async code would freeze the event loop "
                f"its answer comes on; use `await ….{method}.aio(...)`"
            )
        return runtime.wait_patiently(asyncio.run_coroutine_threadsafe(coro, client.loop))

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self.client().loop
        if on_loop(loop):
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def __getstate__(self) -> dict[str, Any]:
        """Sent to a function, a handle finds that process's client there."""
        state = dict(self.__dict__)
        state.pop("_client", None)
        return state


class BoundDual(Generic[P, R]):
    """``handle.method(...)`` waits; ``await handle.method.aio(...)`` awaits."""

    def __init__(
        self, owner: Shared, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]
    ) -> None:
        self._owner = owner
        self._fn = fn
        self.__doc__ = fn.__doc__

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._owner.run(self._fn(self._owner, *args, **kwargs), self._fn.__name__)

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._owner.run_async(self._fn(self._owner, *args, **kwargs))


class dual(Generic[P, R]):
    """Makes a coroutine method a ``BoundDual``."""

    def __init__(self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]) -> None:
        self._fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, owner: Any, cls: Any = None) -> BoundDual[P, R]:
        return BoundDual(owner, self._fn)


def encode(value: Any, what: str) -> bytes:
    """``value`` pickled; an error names ``what`` (the key or the queue) and the limit."""
    try:
        data = payload.encode_value(value, protocol.CODEC_PICKLE)
    except Exception as exc:
        raise payload.cannot_send(what, value, protocol.CODEC_PICKLE, exc) from None
    limit = protocol.SHARED_VALUE_MAX_BYTES
    if len(data) > limit:
        raise BadRequestError(
            f"{what}: the value is {len(data):,} bytes pickled, over the limit of "
            f"{limit:,} bytes (1 MiB): store a smaller value, or split it over keys"
        )
    return bytes(data)  # a big framed pickle's parts, joined (lattice/oob.py)


def decode(data: bytes) -> Any:
    return payload.decode_value(data, protocol.CODEC_PICKLE)


def check_timeout(timeout: float | None, what: str) -> float | None:
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise BadRequestError(f"{what}: timeout must be None or seconds ≥ 0, got {timeout!r}")
    return timeout
