"""A node's capacity: slots handed to waiting calls first come, first served."""

from __future__ import annotations

import asyncio
from collections import deque


class SlotPool:
    """Free slots, handed to waiters first come, first served.

    A resumed parent may ``take`` a slot even when none is free (the count goes
    negative briefly): refusing it would deadlock a recursive fan-out.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over as we were cancelled
            raise

    def try_acquire(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    def take(self) -> None:
        self.free -= 1

    def release(self) -> None:
        self.free += 1
        while self.free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.free -= 1
                waiter.set_result(None)
