"""Ray: ``ray.init(num_cpus=2)`` on this machine (optional: ``pip install -e .[bench]``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench import workloads
from bench.engines.base import Engine

NUM_CPUS = 2
_sort_remote: Any = None


def _remote_sort() -> Any:
    """The nested mergesort as a Ray task, made once per process (driver or worker)."""
    global _sort_remote
    if _sort_remote is None:
        import ray

        _sort_remote = ray.remote(mergesort_task)
    return _sort_remote


def mergesort_task(xs: list[float], depth: int) -> list[float]:
    if depth == 0 or len(xs) <= 1:
        return sorted(xs)
    import ray

    mid = len(xs) // 2
    sort = _remote_sort()
    left, right = sort.remote(xs[:mid], depth - 1), sort.remote(xs[mid:], depth - 1)
    a, b = ray.get([left, right])
    return workloads.merge(a, b)


class RayEngine(Engine):
    name = "ray"
    workloads = frozenset({"cold", "latency", "throughput", "fanout", "cpu", "data", "nested"})

    def __init__(self) -> None:
        self.tasks: dict[str, Any] = {}

    def start(self) -> None:
        import ray

        ray.init(
            num_cpus=NUM_CPUS, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
        self.tasks = {name: ray.remote(fn) for name, fn in workloads.TASKS.items()}

    def stop(self) -> None:
        import ray

        ray.shutdown()

    def call(self, task: str, *args: Any) -> Any:
        import ray

        return ray.get(self.tasks[task].remote(*args))

    def submit(self, task: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        fn = self.tasks[task]
        return [fn.remote(*a) for a in args]

    def wait(self, batch: list[Any], timeout_s: float) -> int:
        import ray

        ready, _ = ray.wait(batch, num_returns=len(batch), timeout=timeout_s, fetch_local=False)
        return len(ready)

    def results(self, batch: list[Any]) -> list[Any]:
        import ray

        return list(ray.get(batch))

    def cancel(self, batch: list[Any]) -> None:
        import ray

        for ref in batch:
            ray.cancel(ref, force=True)

    def mergesort(self, xs: list[float], depth: int) -> list[float]:
        import ray

        result: list[float] = ray.get(_remote_sort().remote(xs, depth))
        return result

    def info(self) -> dict[str, Any]:
        import ray

        return {"version": ray.__version__, "num_cpus": NUM_CPUS}


def make() -> Engine:
    return RayEngine()
