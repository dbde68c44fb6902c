"""Functions the memoization tests cache: each counts its own runs in a file, so a
test can tell whether a call ran or came from the cache."""

from __future__ import annotations

import superpose as sp
from durable_fns import _note as note
from durable_fns import runs

__all__ = ["runs"]


class Boom(Exception):
    pass


class Opaque:
    """No canonical hash: a call given one runs uncached."""

    def __init__(self, n: int) -> None:
        self.n = n


@sp.function(cache=True)
def tenfold(directory: str, x: object) -> object:
    note(directory, "tenfold")
    return [x, x, x, x, x, x, x, x, x, x]


@sp.function(cache=True, cache_ttl=1)
def brief(directory: str, x: int) -> int:
    note(directory, "brief")
    return x


@sp.function(cache=True)
def explode(directory: str, x: int) -> int:
    note(directory, "explode")
    raise Boom(f"no {x}")


@sp.function(cache=True)
def describe(directory: str, thing: Opaque) -> int:
    note(directory, "describe")
    return thing.n


@sp.function
def nested(directory: str, x: int) -> list[object]:
    """A cached call inside a function, twice: made by the executor's own user."""
    first = tenfold.remote(directory, x)
    second = tenfold.spawn(directory, x)
    return [first, second.result(), second.cached]


@sp.function
def nested_burst(directory: str, n: int) -> list[object]:
    """A burst of cached calls inside a function: looked up key by key by the executor's
    app user. Its results, whether each was a hit, and whether the server lets that user
    make a batch lookup (it may not: a batch names no key, so no app)."""
    import asyncio

    from superpose.client import app_state, session
    from superpose.lattice.memo_store import batch_permitted

    futures = [tenfold.spawn(directory, i) for i in range(n)]
    results = [f.result() for f in futures]
    client = session.current_client()

    async def probe() -> bool:
        return await batch_permitted(await app_state.app_connection(client))

    batch = asyncio.run_coroutine_threadsafe(probe(), client.loop)
    return [results, [f.cached for f in futures], batch.result(timeout=30)]


@sp.function(cache=True)
def joined(directory: str, a: list[object], b: list[object]) -> list[object]:
    """Takes two results: given as futures, a cached dataflow."""
    note(directory, "joined")
    return a + b


@sp.function(cache=True)
def measured(directory: str, blob: bytes) -> int:
    """Takes a Ref's value: keyed by the Ref's digest."""
    note(directory, "measured")
    return len(blob)
