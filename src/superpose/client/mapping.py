"""``map``: a window of durable invocations over an iterable, results as they come.

The window bounds the client's memory on a map of millions of items. Results
come back in the order of the items (``order_outputs=True``, the default, as
the builtin ``map``) or as each finishes; a failed item either stops the map
with its exception or, with ``return_exceptions=True``, takes its place.
"""

from __future__ import annotations

import concurrent.futures
import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from superpose import runtime
from superpose.client.futures import Future, outcome
from superpose.client.stragglers import CHECK_EVERY_S, Stragglers
from superpose.errors import BadRequestError

Submit = Callable[[tuple[Any, ...]], Future]
"""Starts one item's invocation."""


class _InOrder:
    """Futures of the items in flight, handed back in the order of the items."""

    def __init__(self, stragglers: Stragglers | None) -> None:
        self._futures: deque[Future] = deque()
        self._stragglers = stragglers

    def add(self, future: Future) -> None:
        self._futures.append(future)

    def take(self) -> Future:
        head = self._futures[0]
        if self._stragglers is not None:
            self._stragglers.wait(head)
        elif not head.done():
            with runtime.blocking():
                concurrent.futures.wait([head])
        return self._futures.popleft()

    def pending(self) -> list[Future]:
        return [f for f in self._futures if not f.done()]

    def __len__(self) -> int:
        return len(self._futures)


class _AsCompleted:
    """Futures of the items in flight, handed back as each finishes."""

    def __init__(self, stragglers: Stragglers | None) -> None:
        self._finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self._in_flight: set[Future] = set()
        self._stragglers = stragglers

    def add(self, future: Future) -> None:
        self._in_flight.add(future)
        future.add_done_callback(self._finished.put)  # type: ignore[arg-type]

    def take(self) -> Future:
        with runtime.blocking():
            while True:
                try:
                    future = self._finished.get(timeout=CHECK_EVERY_S if self._stragglers else None)
                    break
                except queue.Empty:
                    assert self._stragglers is not None
                    self._stragglers.check()
        self._in_flight.discard(future)
        return future

    def pending(self) -> list[Future]:
        return [f for f in self._in_flight if not f.done()]

    def __len__(self) -> int:
        return len(self._in_flight)


def map_results(
    submit: Submit,
    items: Iterable[tuple[Any, ...]],
    *,
    window: int,
    order_outputs: bool,
    return_exceptions: bool,
    stragglers: Stragglers | None,
    advance: Callable[[], None],
    cancel: Callable[[list[Future]], None],
) -> Iterator[Any]:
    """Each item's result (or, with ``return_exceptions``, its exception), keeping at
    most ``window`` items on the lattice; what is still out there when the caller stops
    early (break, error, close) is cancelled."""
    in_flight: _InOrder | _AsCompleted = (
        _InOrder(stragglers) if order_outputs else _AsCompleted(stragglers)
    )

    def next_output() -> Any:
        value = outcome(in_flight.take(), return_exceptions)
        advance()
        return value

    try:
        for item in items:
            future = submit(item)
            in_flight.add(future)
            if stragglers is not None:
                stragglers.track(future)
            if len(in_flight) >= window:
                # Refill in bursts, not one by one: a burst travels in few envelopes
                # (one fsync each), a trickle in one envelope per item.
                while len(in_flight) > window // 2:
                    yield next_output()
        while len(in_flight):
            yield next_output()
    finally:
        left = in_flight.pending()
        if left:
            cancel(left)


def check_window(window: Any) -> int:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise BadRequestError(f"map's window must be a whole number ≥ 1, got {window!r}")
    return window
