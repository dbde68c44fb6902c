"""Functions that use shared dicts and queues from inside an executor, as its own NATS
user (tests/test_shared_state.py, script mode: their app is this module's name)."""

from __future__ import annotations

import queue
from typing import Any

import superpose as sp


@sp.function
def app_name() -> str:
    return sp.Dict("probe").scope


@sp.function
def incr(name: str, key: str) -> int:
    return sp.Dict(name).incr(key)


@sp.function
def shared_incr(name: str, key: str) -> int:
    return sp.Dict(name, shared=True).incr(key)


@sp.function
def dict_ops(name: str) -> dict[str, Any]:
    """Every Dict operation, from a sync function."""
    d = sp.Dict(name)
    d["a"] = {"x": 1}
    d.set("b", 2, ttl=60)
    found: dict[str, Any] = {"a": d["a"], "b in": "b" in d, "get missing": d.get("z", "dflt")}
    try:
        d["z"]
    except KeyError as exc:
        found["keyerror"] = exc.args[0]
    found["cas ok"] = d.cas("b", 2, 3)
    found["cas stale"] = d.cas("b", 2, 4)
    found["incr"] = d.incr("n", 5)
    del d["a"]
    found["keys"] = d.keys()
    return found


@sp.function
async def dict_ops_async(name: str) -> dict[str, Any]:
    """The ``.aio`` forms, from an async function (on the executor's own loop)."""
    d = sp.Dict(name)
    await d.set.aio("k", "v")
    return {
        "get": await d.get.aio("k"),
        "contains": await d.contains.aio("k"),
        "incr": await d.incr.aio("n", 2),
        "cas": await d.cas.aio("k", "v", "w"),
        "keys": await d.keys.aio(),
        "delete": await d.delete.aio("k"),
        "after": await d.get.aio("k", "gone"),
    }


@sp.function
def read(name: str, key: str) -> Any:
    return sp.Dict(name).get(key)


@sp.function
def produce(name: str, items: list[Any]) -> int:
    q = sp.Queue(name)
    q.put(items[0])
    q.put_many(items[1:])
    return len(items)


@sp.function
def consume_one_after_saying(name: str, started: str) -> Any:
    """Says it is waiting (a count in ``started``), then waits for one item."""
    sp.Dict(started).incr("waiting")
    return sp.Queue(name).get(timeout=90)


@sp.function
def consume(name: str, n: int) -> list[Any]:
    q = sp.Queue(name)
    got: list[Any] = []
    while len(got) < n:
        got += q.get_many(n - len(got), timeout=60)
    return got


@sp.function
async def consume_async(name: str) -> Any:
    return await sp.Queue(name).get.aio(timeout=60)


@sp.function
def get_empty(name: str) -> str:
    try:
        sp.Queue(name).get(timeout=0.2)
    except queue.Empty as exc:
        return f"Empty: {exc}"
    return "got something"


@sp.function
def too_big(name: str) -> str:
    try:
        sp.Dict(name)["huge"] = b"x" * (2 * 1024 * 1024)
    except sp.UserError as exc:
        return str(exc)
    return "stored"


@sp.function
def other_app_write(app: str, name: str) -> int:
    return sp.Dict(name, app=app).incr("k")


@sp.function
def watch_for(name: str, key: str) -> tuple[Any, str] | None:
    """Watches from inside the function (its push consumer delivers to the executor's own
    inbox), says it is ready through the Dict, and returns the first change of ``key``."""
    d = sp.Dict(name)
    with d.watch(key) as changes:
        d["ready"] = True
        change = changes.next(timeout=60)
    return None if change is None else (change.value, change.op)


@sp.function
def durable_round_trip(name: str) -> list[Any]:
    d, q = sp.Dict(name, durable=True), sp.Queue(name, durable=True)
    d["k"] = "kept"
    q.put("item")
    return [d["k"], q.get(timeout=10), len(q)]


@sp.function
async def blocking_in_async(name: str) -> str:
    try:
        sp.Dict(name)["k"] = 1
    except sp.UserError as exc:
        return str(exc)
    return "no error"


@sp.function
def use_handles(d: sp.Dict, q: sp.Queue) -> list[Any]:
    """Handles passed as arguments find this process's client."""
    return [d["k"], q.get(timeout=10), d.label]
