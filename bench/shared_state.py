"""Shared dicts against Redis (issue 16 item 6): ``python -m bench.shared_state [N]``.

Starts a private lattice (``sp.connect(workers=2)``: 2 nodes) and a Debian
``redis-server`` (no persistence) on this machine, and prints JSON:

- get/set p50 from inside a function (a Dict, sync and awaited ``.aio``, and redis-py
  from the same function, or from the bench process when the node's executors cannot
  import redis-py);
- ops/s from one process, sync (alternating set and get, one at a time), for a Dict from
  the script and for redis-py;
- ops/s pipelined: a Dict's ``.aio`` calls 250 at a time with ``asyncio.gather``, inside
  an async function and from the script's own loop, against a redis-py pipeline of 250;
- ``incr`` from 200 concurrent invocations, which must count exactly 200;
- the floor: a core NATS request/reply from the script through the same client;

with the ratios the targets name: Dict p50 ≤ 2× Redis's, ≥ 30,000 ops/s pipelined.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from bench.shared_state_fns import p50_ms, redis_round_trips

VALUE = {"user": 1, "seen": "2026-12-07"}
BATCH = 250


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[int | None]:
    """A throwaway redis-server on a free port (None when it is not installed)."""
    binary = shutil.which("redis-server")
    try:
        import redis
    except ImportError:
        binary = None
    if binary is None:
        yield None
        return
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _sync_ops(set_: Any, get: Any, n: int) -> float:
    started = time.perf_counter()
    for i in range(n // 2):
        set_(f"k{i % 100}", VALUE)
        get(f"k{i % 100}")
    return n / (time.perf_counter() - started)


def dict_sync_ops(d: Any, n: int) -> float:
    return _sync_ops(d.set, d.get, n)


def nats_echo_p50(client: Any, n: int) -> float:
    """The floor under any Dict call from a script: a core NATS request to a responder on
    the same connection, through the same hop to the client's loop (ms)."""
    subject = f"bench.echo.{uuid.uuid4().hex}"

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    sub = client.run(client.nc.subscribe(subject, cb=echo))
    try:
        return p50_ms(lambda i: client.run(client.nc.request(subject, b"x", timeout=5)), n)
    finally:
        client.run(sub.unsubscribe())


def dict_p50(d: Any, n: int) -> dict[str, float]:
    """The same for a Dict from this process (the sync API, through the client's loop)."""
    return {
        "set_ms": p50_ms(lambda i: d.set(f"k{i % 100}", VALUE), n),
        "get_ms": p50_ms(lambda i: d.get(f"k{i % 100}"), n),
    }


def redis_sync_ops(port: int, n: int) -> float:
    import redis

    r = redis.Redis(port=port)
    try:
        return _sync_ops(
            lambda k, v: r.set(k, pickle.dumps(v)), lambda k: pickle.loads(r.get(k) or b"N."), n
        )
    finally:
        r.close()


def redis_pipelined_ops(port: int, n: int) -> float:
    import redis

    r = redis.Redis(port=port)
    try:
        started = time.perf_counter()
        for start in range(0, n, 2 * BATCH):
            pipe = r.pipeline(transaction=False)
            for i in range(start, start + BATCH):
                pipe.set(f"k{i % 100}", pickle.dumps(i))
            pipe.execute()
            pipe = r.pipeline(transaction=False)
            for i in range(start, start + BATCH):
                pipe.get(f"k{i % 100}")
            [pickle.loads(v or b"N.") for v in pipe.execute()]
        return n / (time.perf_counter() - started)
    finally:
        r.close()


async def dict_pipelined_from_script(d: Any, n: int) -> float:
    """``.aio`` calls from the script's own event loop (not the client's)."""
    started = time.perf_counter()
    for start in range(0, n, 2 * BATCH):
        await asyncio.gather(*(d.set.aio(f"k{i % 100}", i) for i in range(start, start + BATCH)))
        await asyncio.gather(*(d.get.aio(f"k{i % 100}") for i in range(start, start + BATCH)))
    return n / (time.perf_counter() - started)


def measure(n: int) -> dict[str, Any]:
    import superpose as sp
    from bench import shared_state_fns as fns

    out: dict[str, Any] = {"n": n}
    client = sp.connect(workers=2, show_logs=False)
    with client, redis_server() as port:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        app = fns.app.remote()  # their Dicts are that app's
        fns.dict_p50.remote(name, 50)  # warm the executor
        inside = [fns.dict_p50.remote(name, n // 10) for _ in range(3)]
        out["dict_inside_set_p50_ms"] = statistics.median(r["set_ms"] for r in inside)
        out["dict_inside_get_p50_ms"] = statistics.median(r["get_ms"] for r in inside)
        inside_async = fns.dict_p50_async.remote(name, n // 10)
        out["dict_inside_async_set_p50_ms"] = inside_async["set_ms"]
        out["dict_inside_async_get_p50_ms"] = inside_async["get_ms"]
        d = sp.Dict(name, app=app)
        out["dict_sync_ops_s"] = statistics.median(dict_sync_ops(d, n) for _ in range(3))
        out["dict_pipelined_inside_ops_s"] = statistics.median(
            fns.dict_pipelined.remote(name, n * 5) for _ in range(3)
        )
        out["dict_pipelined_script_ops_s"] = asyncio.run(dict_pipelined_from_script(d, n))
        counter = f"count_{uuid.uuid4().hex[:8]}"
        futures = [fns.incr.spawn(counter) for _ in range(200)]
        [f.result(timeout=300) for f in futures]
        out["incr_200_concurrent"] = sp.Dict(counter, app=app)["hits"]
        if port is None:
            out["redis"] = "not installed (apt-get install redis-server; pip install redis)"
            return out
        redis_inside = fns.redis_p50.remote(port, n // 10)
        if isinstance(redis_inside, str):  # executors may not see the bench's packages
            out["redis_inside"] = redis_inside
            redis_inside = redis_round_trips(port, n // 10)
            out["redis_p50_measured_from"] = "the bench process"
        out["redis_set_p50_ms"] = redis_inside["set_ms"]
        out["redis_get_p50_ms"] = redis_inside["get_ms"]
        out["dict_script_p50_ms"] = dict_p50(d, n // 10)
        out["nats_echo_script_p50_ms"] = nats_echo_p50(client, n // 10)
        out["redis_sync_ops_s"] = statistics.median(redis_sync_ops(port, n) for _ in range(3))
        out["redis_pipelined_ops_s"] = statistics.median(
            redis_pipelined_ops(port, n * 5) for _ in range(3)
        )
    out["ratios"] = ratios(out)
    return out


def ratios(out: dict[str, Any]) -> dict[str, float]:
    """Dict ÷ Redis: latency ratios (target ≤ 2) and throughput ratios."""
    return {
        "set_p50_vs_redis": out["dict_inside_set_p50_ms"] / out["redis_set_p50_ms"],
        "get_p50_vs_redis": out["dict_inside_get_p50_ms"] / out["redis_get_p50_ms"],
        "sync_ops_vs_redis": out["dict_sync_ops_s"] / out["redis_sync_ops_s"],
        "pipelined_inside_vs_redis": out["dict_pipelined_inside_ops_s"]
        / out["redis_pipelined_ops_s"],
        "pipelined_target_30k": out["dict_pipelined_inside_ops_s"] / 30_000,
    }


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 4000
    print(json.dumps(measure(n), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
