"""``concurrent.futures.ProcessPoolExecutor(2)``: the single-machine floor."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import Any

from bench import workloads
from bench.engines.base import Engine

WORKERS = 2


class PoolEngine(Engine):
    name = "processpool"
    workloads = frozenset({"cold", "latency", "throughput", "fanout", "cpu", "data"})

    def __init__(self) -> None:
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def start(self) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(WORKERS)

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def call(self, task: str, *args: Any) -> Any:
        assert self.pool is not None
        return self.pool.submit(workloads.TASKS[task], *args).result()

    def submit(self, task: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        assert self.pool is not None
        fn = workloads.TASKS[task]
        return [self.pool.submit(fn, *a) for a in args]

    def wait(self, batch: list[Any], timeout_s: float) -> int:
        done, _ = concurrent.futures.wait(batch, timeout=timeout_s)
        return len(done)

    def results(self, batch: list[Any]) -> list[Any]:
        return [f.result() for f in batch]

    def cancel(self, batch: list[Any]) -> None:
        for future in batch:
            future.cancel()

    def info(self) -> dict[str, Any]:
        import multiprocessing

        return {"workers": WORKERS, "start_method": multiprocessing.get_start_method()}


def make() -> Engine:
    return PoolEngine()
