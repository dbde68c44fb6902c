"""The shared workload drivers: the same steps, timed the same way, for every engine.

Each driver returns one dict of figures per repeat. Timed sections use
``time.perf_counter``; nothing here asserts on time, but every result is
checked for correctness so a fast wrong answer cannot pass as a figure.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from bench import workloads
from bench.engines.base import Engine
from bench.workloads import Sizes

Figures = dict[str, Any]
MB = 1024 * 1024
MEMORY_FLOOR_GIB = 6.0
"""Stop waiting on a nested run when the machine gets this close to running out of memory
(Ray starts one worker process per task blocked in ``ray.get``)."""


def cold(engine: Engine, sizes: Sizes) -> list[Figures]:
    """From nothing (library not yet imported) to the first no-op result, then shutdown."""
    started = time.perf_counter()
    engine.start()
    result = engine.call("noop", 1)
    ready = time.perf_counter()
    engine.stop()
    stopped = time.perf_counter()
    _check(result == 1, f"noop returned {result!r}")
    return [{"start_s": ready - started, "shutdown_s": stopped - ready}]


def latency(engine: Engine, sizes: Sizes) -> list[Figures]:
    """Sequential no-op calls after a warm-up: per-call p50/p99 for each repeat."""
    out = []
    for _ in range(sizes.latency_repeats):
        for i in range(sizes.latency_warmup):
            engine.call("noop", i)
        times = []
        for i in range(sizes.latency_calls):
            started = time.perf_counter()
            result = engine.call("noop", i)
            times.append(time.perf_counter() - started)
            _check(result == i, f"noop({i}) returned {result!r}")
        out.append(
            {
                "p50_ms": percentile(times, 50) * 1000,
                "p99_ms": percentile(times, 99) * 1000,
                "mean_ms": statistics.fmean(times) * 1000,
                "calls": len(times),
            }
        )
    return out


def throughput(engine: Engine, sizes: Sizes) -> list[Figures]:
    """N no-op tasks submitted at once and gathered; stops repeating once one overruns."""
    args = [(i,) for i in range(sizes.throughput_tasks)]
    out = []
    for _ in range(sizes.throughput_repeats):
        figures = _batch(
            engine,
            "noop",
            args,
            sizes.throughput_budget_s,
            expect=lambda results: results == list(range(len(args))),
        )
        figures["tasks_per_s"] = figures["finished"] / figures["wall_s"]
        out.append(figures)
        if figures["finished"] < len(args):
            break
    return out


def fanout(engine: Engine, sizes: Sizes) -> list[Figures]:
    """Many short sleeping tasks: how close to ``n × sleep / slots`` the engine gets."""
    args = [(sizes.fanout_sleep_ms,)] * sizes.fanout_tasks
    ideal = sizes.fanout_tasks * sizes.fanout_sleep_ms / 1000 / 2
    return _repeat_batches(
        engine, "sleep_ms", args, ideal, sizes.fanout_repeats, sizes.fanout_budget_s
    )


def cpu(engine: Engine, sizes: Sizes) -> list[Figures]:
    """Pure-Python CPU tasks of ~20 ms each (calibrated here) on 2 workers."""
    args = [(sizes.cpu_iterations,)] * sizes.cpu_tasks
    ideal = sizes.cpu_tasks * sizes.cpu_task_s / 2
    return _repeat_batches(engine, "burn", args, ideal, sizes.cpu_repeats, sizes.cpu_budget_s)


def data(engine: Engine, sizes: Sizes) -> list[Figures]:
    """A big bytes argument in, a big result out, and (where it fits) a bigger round trip."""
    n, n_big = sizes.data_mb * MB, sizes.data_big_mb * MB
    payload = random.Random(1).randbytes(n)
    engine.call("echo_len", b"warm")
    engine.call("make_bytes", 1)
    engine.call("identity", b"warm")
    out = []
    for _ in range(sizes.data_repeats):
        figures: Figures = {}
        figures["in_s"], got = _timed(lambda: engine.call("echo_len", payload))
        _check(got == n, f"echo_len saw {got} bytes, sent {n}")
        figures["out_s"], got = _timed(lambda: engine.call("make_bytes", n))
        _check(len(got) == n, f"make_bytes returned {len(got)} bytes, wanted {n}")
        del got
        if engine.big_data:
            try:
                figures["roundtrip_big_s"] = _round_trip(engine, n_big)
            except Exception as exc:  # one failed size must not hide the others
                figures["roundtrip_big_s_error"] = f"{type(exc).__name__}: {exc}"
        out.append(figures)
    return out


def nested(engine: Engine, sizes: Sizes) -> list[Figures]:
    """Recursive parallel mergesort: every level spawns two children and waits for them."""
    xs = workloads.floats(sizes.nested_n)
    expected = sorted(xs)
    warm = engine.mergesort(xs[:64], 2)
    _check(warm == sorted(xs[:64]), "warm-up mergesort is wrong")
    out = []
    for _ in range(sizes.nested_repeats):
        wall, result, why = _with_budget(
            lambda: engine.mergesort(xs, sizes.nested_depth), sizes.nested_budget_s
        )
        if result is None:
            tasks = 2 ** (sizes.nested_depth + 1) - 1
            out.append(
                {"wall_s": wall, "finished": 0, "tasks": tasks, "timed_out": True, "stopped": why}
            )
            break
        _check(result == expected, "mergesort result is not sorted input")
        out.append({"wall_s": wall, "tasks": 2 ** (sizes.nested_depth + 1) - 1})
    return out


DRIVERS: dict[str, Callable[[Engine, Sizes], list[Figures]]] = {
    "latency": latency,
    "throughput": throughput,
    "fanout": fanout,
    "cpu": cpu,
    "data": data,
    "nested": nested,
}


# --- helpers ----------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a reported value was really seen)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _round_trip(engine: Engine, n: int) -> float:
    payload = b"\x05" * n
    wall, got = _timed(lambda: engine.call("identity", payload))
    _check(len(got) == n, f"identity returned {len(got)} bytes, sent {n}")
    return wall


def _batch(
    engine: Engine,
    task: str,
    args: list[tuple[Any, ...]],
    budget_s: float,
    expect: Callable[[list[Any]], bool],
) -> Figures:
    started = time.perf_counter()
    batch = engine.submit(task, args)
    submitted = time.perf_counter()
    finished = engine.wait(batch, budget_s)
    wall = time.perf_counter() - started
    figures: Figures = {
        "wall_s": wall,
        "submit_s": submitted - started,
        "finished": finished,
        "tasks": len(args),
    }
    if finished < len(args):
        figures["timed_out"] = True
        engine.cancel(batch)
        return figures
    _check(expect(engine.results(batch)), f"{task} batch returned wrong results")
    return figures


def _repeat_batches(
    engine: Engine,
    task: str,
    args: list[tuple[Any, ...]],
    ideal_s: float,
    repeats: int,
    budget_s: float,
) -> list[Figures]:
    engine.call(task, *args[0])  # warm: the function is loaded before the clock starts
    expected = engine.call(task, *args[0])
    out = []
    for _ in range(repeats):
        figures = _batch(
            engine, task, args, budget_s, expect=lambda results: results == [expected] * len(args)
        )
        figures["ideal_s"] = ideal_s
        figures["efficiency"] = ideal_s / figures["wall_s"] if not figures.get("timed_out") else 0
        out.append(figures)
        if figures.get("timed_out"):
            break
    return out


def _with_budget(fn: Callable[[], Any], budget_s: float) -> tuple[float, Any, str]:
    """Run ``fn`` in a thread: (elapsed, result, "") or (elapsed, None, why it was abandoned)."""
    box: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            errors.append(exc)

    started = time.perf_counter()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    why = "budget"
    while thread.is_alive() and time.perf_counter() - started < budget_s:
        thread.join(0.5)
        if available_gib() < MEMORY_FLOOR_GIB:
            why = f"memory: under {MEMORY_FLOOR_GIB:g} GiB available"
            break
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return (wall, box[0], "") if box else (wall, None, why)


def available_gib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")
