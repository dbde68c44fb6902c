"""Dask: ``LocalCluster(n_workers=2, threads_per_worker=1)`` (optional: ``.[bench]``)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from bench import workloads
from bench.engines.base import Engine

N_WORKERS = 2


def mergesort_task(xs: list[float], depth: int) -> list[float]:
    """Nested tasks the Dask way: ``worker_client`` secedes the waiting thread."""
    if depth == 0 or len(xs) <= 1:
        return sorted(xs)
    from distributed import worker_client

    mid = len(xs) // 2
    with worker_client() as client:
        left = client.submit(mergesort_task, xs[:mid], depth - 1, pure=False)
        right = client.submit(mergesort_task, xs[mid:], depth - 1, pure=False)
        a, b = client.gather([left, right])
    return workloads.merge(a, b)


class DaskEngine(Engine):
    name = "dask"
    workloads = frozenset({"cold", "latency", "throughput", "fanout", "cpu", "data", "nested"})

    def __init__(self) -> None:
        self.cluster: Any = None
        self.client: Any = None

    def start(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=N_WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
        )
        self.client = Client(self.cluster)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.cluster.close()
            self.client = self.cluster = None

    def call(self, task: str, *args: Any) -> Any:
        return self.client.submit(workloads.TASKS[task], *args, pure=False).result()

    def submit(self, task: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        columns = list(zip(*args, strict=True))
        futures: list[Any] = self.client.map(workloads.TASKS[task], *columns, pure=False)
        return futures

    def wait(self, batch: list[Any], timeout_s: float) -> int:
        from distributed import wait

        with contextlib.suppress(TimeoutError):
            wait(batch, timeout=timeout_s)
        return sum(1 for f in batch if f.done())

    def results(self, batch: list[Any]) -> list[Any]:
        results: list[Any] = self.client.gather(batch)
        return results

    def cancel(self, batch: list[Any]) -> None:
        self.client.cancel(batch)

    def mergesort(self, xs: list[float], depth: int) -> list[float]:
        result: list[float] = self.client.submit(mergesort_task, xs, depth, pure=False).result()
        return result

    def info(self) -> dict[str, Any]:
        import dask
        import distributed

        return {
            "version": dask.__version__,
            "distributed": distributed.__version__,
            "n_workers": N_WORKERS,
            "threads_per_worker": 1,
        }


def make() -> Engine:
    return DaskEngine()
