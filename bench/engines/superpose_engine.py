"""superpose: an embedded lattice started by ``sp.connect()`` (2 nodes × 1 slot here)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import Any

from bench.engines.base import Engine

WORKERS = 2


class SuperposeEngine(Engine):
    name = "superpose"
    workloads = frozenset({"cold", "latency", "throughput", "fanout", "cpu", "data", "nested"})

    def __init__(self) -> None:
        self.client: Any = None
        self.tasks: dict[str, Any] = {}

    def start(self) -> None:
        import superpose as sp
        from bench import sp_tasks

        self.tasks = sp_tasks.TASKS
        self.client = sp.connect(workers=WORKERS, show_logs=False)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def call(self, task: str, *args: Any) -> Any:
        return self.tasks[task].remote(*args)

    def submit(self, task: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        fn = self.tasks[task]
        return [fn.spawn(*a) for a in args]

    def wait(self, batch: list[Any], timeout_s: float) -> int:
        done, _ = concurrent.futures.wait(batch, timeout=timeout_s)
        return len(done)

    def results(self, batch: list[Any]) -> list[Any]:
        import superpose as sp

        return sp.gather(*batch)

    def cancel(self, batch: list[Any]) -> None:
        for future in batch:
            future.cancel()

    def mergesort(self, xs: list[float], depth: int) -> list[float]:
        from bench import sp_tasks

        result: list[float] = sp_tasks.mergesort.remote(xs, depth)
        return result

    def info(self) -> dict[str, Any]:
        import os

        import superpose

        slots = max(1, (os.cpu_count() or 1) // WORKERS)
        return {
            "version": getattr(superpose, "__version__", "0.1.0"),
            "nodes": WORKERS,
            "slots_per_node": slots,
        }


def make() -> Engine:
    return SuperposeEngine()
