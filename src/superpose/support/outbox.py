"""The one way work crosses into an event loop in order: an ``Outbox``.

Items are put from any thread (a script's main thread, an executor's lane
threads, the loop itself) and taken on the loop in the order they were put, with
one wake-up per burst, not one per item: 20,000 spawns cost one wake-up per
batch, and a lane thread that hands the loop a call's output and then its result
cannot see the result leave first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from superpose.support.eventloop import on_loop

T = TypeVar("T")


class Outbox(Generic[T]):
    """FIFO from any thread to one loop. The consumer is woken once per burst: either a
    callback it gives (run on the loop), or, without one, its ``next_burst()`` returns."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None] | None = None
    ) -> None:
        self._loop = loop
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()
        self._wake = wake or self._ready.set
        self._scheduled = False

    def put(self, item: T) -> None:
        self._items.append(item)
        if not self._scheduled:  # one wake-up per burst, not per item
            self._scheduled = True
            if on_loop(self._loop):
                self._wake()
            else:
                self._loop.call_soon_threadsafe(self._wake)

    def take(self) -> list[T]:
        """Everything put so far, in order. Items put from now on wake the consumer again."""
        self._scheduled = False
        taken: list[T] = []
        while self._items:  # popleft, not a swap: another thread may be appending
            taken.append(self._items.popleft())
        return taken

    async def next_burst(self) -> list[T]:
        """Wait until something was put, then take it (for consumers without a callback)."""
        await self._ready.wait()
        self._ready.clear()
        return self.take()

    def __len__(self) -> int:
        return len(self._items)
