"""The shared-state workload's functions (``bench/shared_state.py``): Dict and Redis
round trips timed from inside a function, on a node."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import superpose as sp


def p50_ms(op: Any, n: int) -> float:
    times = []
    for i in range(n):
        started = time.perf_counter()
        op(i)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@sp.function
def dict_p50(name: str, n: int) -> dict[str, float]:
    """p50 of a set and of a get, in ms, from this function's executor."""
    d = sp.Dict(name)
    value = {"user": 1, "seen": "2026-12-07"}
    d["k0"] = value
    return {
        "set_ms": p50_ms(lambda i: d.set(f"k{i % 100}", value), n),
        "get_ms": p50_ms(lambda i: d.get(f"k{i % 100}"), n),
    }


@sp.function
async def dict_p50_async(name: str, n: int) -> dict[str, float]:
    """The same with ``.aio`` calls awaited one at a time in an async function: no hop
    between a worker thread and the executor's loop."""
    d = sp.Dict(name)
    value = {"user": 1, "seen": "2026-12-07"}
    times: dict[str, list[float]] = {"set_ms": [], "get_ms": []}
    for i in range(n):
        started = time.perf_counter()
        await d.set.aio(f"k{i % 100}", value)
        middle = time.perf_counter()
        await d.get.aio(f"k{i % 100}")
        times["set_ms"].append((middle - started) * 1000)
        times["get_ms"].append((time.perf_counter() - middle) * 1000)
    return {what: statistics.median(found) for what, found in times.items()}


def redis_round_trips(port: int, n: int) -> dict[str, float]:
    """p50 of a set and of a get, in ms, with redis-py against the bench's redis-server,
    values pickled as a Dict's are."""
    import pickle

    import redis

    r = redis.Redis(port=port)
    value = pickle.dumps({"user": 1, "seen": "2026-12-07"})
    r.set("k0", value)
    try:
        return {
            "set_ms": p50_ms(lambda i: r.set(f"k{i % 100}", value), n),
            "get_ms": p50_ms(lambda i: pickle.loads(r.get(f"k{i % 100}") or b"N."), n),
        }
    finally:
        r.close()


@sp.function
def redis_p50(port: int, n: int) -> dict[str, float] | str:
    """``redis_round_trips`` from this function's executor, if it can import redis-py."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed on the node"
    return redis_round_trips(port, n)


@sp.function
async def dict_pipelined(name: str, n: int) -> float:
    """Sets and gets in flight together (``asyncio.gather`` of ``.aio`` calls, 500 at a
    time) on the executor's own loop: ops/s."""
    d = sp.Dict(name)
    started = time.perf_counter()
    for start in range(0, n, 500):
        await asyncio.gather(*(d.set.aio(f"k{i % 100}", i) for i in range(start, start + 250)))
        await asyncio.gather(*(d.get.aio(f"k{i % 100}") for i in range(start, start + 250)))
    return n / (time.perf_counter() - started)


@sp.function
def incr(name: str) -> int:
    return sp.Dict(name).incr("hits")


@sp.function
def app() -> str:
    """The app these functions run as: their Dicts are that app's."""
    return sp.Dict("probe").scope.split(".", 1)[1]
