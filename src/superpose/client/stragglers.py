"""Speculative duplicates for ``map`` over an idempotent function.

Once most items of a map are done, an item that has taken longer than k× the
median time its finished siblings took (from submission to result) gets a
second copy on the lattice. Both copies carry the same invocation id: the
first result stored wins, later copies find it and stop, and the copy still
running is killed once the winner's result arrives.
"""

from __future__ import annotations

import concurrent.futures
import statistics
import threading
import time
from typing import TYPE_CHECKING, Any

from superpose import runtime
from superpose.client.futures import Future

if TYPE_CHECKING:
    from superpose.client.client import Client
    from superpose.client.options import Options

MOST_DONE = 0.5
"""Fraction of a map's items that must be done before stragglers are looked for. Not
higher: a node stuck on one item also holds the items it took after it (up to its
pipeline depth), and those must not keep the map below the mark."""
CHECK_EVERY_S = 0.1
MIN_THRESHOLD_S = 0.2
"""Never duplicate an item younger than this, however fast its siblings were."""


class Stragglers:
    def __init__(self, client: Client, options: Options) -> None:
        self.client = client
        self.factor = options.straggler_factor
        self.submitted: dict[str, float] = {}
        self.latencies: list[float] = []
        self.speculated: set[str] = set()
        self.total = 0
        self._lock = threading.Lock()

    def track(self, future: Future) -> None:
        with self._lock:
            self.submitted[future.invocation_id] = time.monotonic()
            self.total += 1
        future.add_done_callback(self._finished)

    def _finished(self, future: concurrent.futures.Future[Any]) -> None:
        inv_id = getattr(future, "invocation_id", "")
        with self._lock:
            started = self.submitted.pop(inv_id, None)
            if started is not None and not future.cancelled():
                self.latencies.append(time.monotonic() - started)
            speculated = inv_id in self.speculated
        if speculated:  # the winner is in: stop the copy still running
            self.client.stop_copies(inv_id)

    def wait(self, head: Future) -> None:
        """Wait for ``head``, launching duplicates of stragglers meanwhile."""
        while not head.done():
            with runtime.blocking():
                concurrent.futures.wait([head], timeout=CHECK_EVERY_S)
            self.check()

    def check(self) -> None:
        with self._lock:
            if not self.latencies or len(self.latencies) < MOST_DONE * self.total:
                return
            threshold = max(MIN_THRESHOLD_S, self.factor * statistics.median(self.latencies))
            now = time.monotonic()
            slow = [
                inv_id
                for inv_id, started in self.submitted.items()
                if inv_id not in self.speculated and now - started > threshold
            ]
            self.speculated.update(slow)
        for inv_id in slow:
            self.client.speculate(inv_id)
