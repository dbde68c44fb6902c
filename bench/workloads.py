"""Plain task functions shared by every engine, and the sizes of each workload.

Nothing here imports an engine: the engines wrap these functions in their own
decorators (``@sp.function`` in ``sp_tasks``, ``@ray.remote`` in the Ray engine)
or submit them as they are (Dask, the process pool, the NATS responder).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

CPU_TASK_TARGET_S = 0.020


def noop(x: Any = None) -> Any:
    return x


def sleep_ms(ms: float) -> float:
    time.sleep(ms / 1000)
    return ms


def burn(iterations: int) -> int:
    """Pure-Python integer arithmetic: holds the GIL for the whole task."""
    x = 0
    for i in range(iterations):
        x = (x * 31 + i) % 1_000_003
    return x


def echo_len(data: bytes) -> int:
    return len(data)


def make_bytes(n: int) -> bytes:
    return b"\x07" * n


def identity(data: Any) -> Any:
    return data


def merge(a: list[float], b: list[float]) -> list[float]:
    out: list[float] = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    out.extend(a[i:])
    out.extend(b[j:])
    return out


def floats(n: int, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [rng.random() for _ in range(n)]


TASKS: dict[str, Callable[..., Any]] = {
    "noop": noop,
    "sleep_ms": sleep_ms,
    "burn": burn,
    "echo_len": echo_len,
    "make_bytes": make_bytes,
    "identity": identity,
}


def calibrate_burn(target_s: float = CPU_TASK_TARGET_S) -> tuple[int, float]:
    """Iterations of ``burn`` that take about ``target_s`` here, and their measured time."""
    iterations = 10_000
    while True:
        took = _time_burn(iterations)
        if took >= target_s / 4:
            break
        iterations *= 2
    for _ in range(2):  # rescale twice: the first estimate is off on a busy machine
        iterations = int(iterations * target_s / took)
        took = _time_burn(iterations)
    return iterations, took


def _time_burn(iterations: int, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        burn(iterations)
        times.append(time.perf_counter() - started)
    return min(times)  # the least disturbed run: other load only ever adds time


@dataclass(frozen=True)
class Sizes:
    """How big each workload is and how often it repeats (full run or ``--quick``)."""

    cold_repeats: int
    latency_calls: int
    latency_warmup: int
    latency_repeats: int
    throughput_tasks: int
    throughput_repeats: int
    throughput_budget_s: float
    fanout_tasks: int
    fanout_sleep_ms: float
    fanout_repeats: int
    fanout_budget_s: float
    cpu_tasks: int
    cpu_repeats: int
    cpu_budget_s: float
    data_mb: int
    data_big_mb: int
    data_repeats: int
    nested_n: int
    nested_depth: int
    nested_repeats: int
    nested_budget_s: float
    sp_up_repeats: int
    sp_bundle_repeats: int
    sp_update_repeats: int
    cpu_iterations: int = 0
    """Filled in by the runner after calibrating ``burn`` on this machine."""
    cpu_task_s: float = 0.0
    """What one ``burn(cpu_iterations)`` took in the runner process."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Sizes(
    cold_repeats=3,
    latency_calls=1000,
    latency_warmup=100,
    latency_repeats=3,
    throughput_tasks=20_000,
    throughput_repeats=2,
    throughput_budget_s=120.0,
    fanout_tasks=2000,
    fanout_sleep_ms=5.0,
    fanout_repeats=2,
    fanout_budget_s=90.0,
    cpu_tasks=200,
    cpu_repeats=3,
    cpu_budget_s=60.0,
    data_mb=50,
    data_big_mb=200,
    data_repeats=2,
    nested_n=100_000,
    nested_depth=10,
    nested_repeats=2,
    nested_budget_s=90.0,
    sp_up_repeats=3,
    sp_bundle_repeats=3,
    sp_update_repeats=3,
)

QUICK = Sizes(
    cold_repeats=1,
    latency_calls=200,
    latency_warmup=20,
    latency_repeats=1,
    throughput_tasks=2000,
    throughput_repeats=1,
    throughput_budget_s=45.0,
    fanout_tasks=400,
    fanout_sleep_ms=5.0,
    fanout_repeats=1,
    fanout_budget_s=45.0,
    cpu_tasks=50,
    cpu_repeats=1,
    cpu_budget_s=30.0,
    data_mb=10,
    data_big_mb=20,
    data_repeats=1,
    nested_n=20_000,
    nested_depth=6,
    nested_repeats=1,
    nested_budget_s=45.0,
    sp_up_repeats=1,
    sp_bundle_repeats=1,
    sp_update_repeats=1,
)
