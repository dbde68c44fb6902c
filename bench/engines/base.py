"""What every engine offers the shared workload drivers in ``bench.harness``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

NA = "n/a"


class Unsupported(Exception):
    """The engine has no meaningful way to run this workload (reported as n/a)."""


class Engine(ABC):
    """Start, call, fan out and stop. Library imports happen in ``start`` (cold start)."""

    name: str = ""
    workloads: frozenset[str] = frozenset()
    """Which shared workloads apply; the others are reported as n/a."""
    big_data: bool = True
    """False where the big round trip cannot fit (NATS caps one message at 64 MiB)."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def call(self, task: str, *args: Any) -> Any:
        """Run one task and wait for its result."""

    @abstractmethod
    def submit(self, task: str, args: Sequence[tuple[Any, ...]]) -> Any:
        """Start one task per argument tuple at once; returns an opaque batch."""

    @abstractmethod
    def wait(self, batch: Any, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the whole batch; returns how many tasks finished."""

    @abstractmethod
    def results(self, batch: Any) -> list[Any]:
        """Results of a finished batch, in submission order."""

    def cancel(self, batch: Any) -> None:  # noqa: B027 - optional, best effort
        """Drop what is left of a batch that ran out of time."""

    def mergesort(self, xs: list[float], depth: int) -> list[float]:
        raise Unsupported(f"{self.name} has no nested tasks")

    def info(self) -> dict[str, Any]:
        """Versions and settings worth recording next to the figures."""
        return {}
