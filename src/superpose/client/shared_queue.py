"""``sp.Queue``: a first-in first-out queue every process of an app (or of the lattice)
shares, with ``queue.Queue``'s ``put``/``get`` and its ``Empty`` and ``Full``.

Items live in a work-queue stream for all apps (``lattice/work_queues.py``), in memory
unless ``durable=True``. An item is taken by exactly one ``get``: it is pulled from the
queue's one consumer and acknowledged (so removed) before ``get`` returns it. A reader
that dies holding an item it has not acknowledged gives it back after 30 s.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Iterable
from typing import Any

from superpose import protocol
from superpose.client.shared_base import Shared, check_timeout, decode, dual, encode
from superpose.client.shared_names import check_name, label, scope_of
from superpose.errors import BadRequestError, NotFoundError
from superpose.lattice import work_queues

FULL_RECHECK_S = (0.005, 0.1)
"""A put waiting for room checks again after 5 ms, doubling up to 100 ms."""
PUT_MANY_MAX = protocol.ATOMIC_BATCH_MAX
"""``put_many`` is one atomic batch: the server's limit on one."""


class Queue(Shared):
    """A shared queue: ``put``, ``get``, ``put_many``, ``get_many``, ``len(q)``,
    ``delete``; each method also as ``.aio``.

    ``maxsize``: at most that many items (0: no limit; None: what the queue was made
    with, 0 for a new one). ``shared=True``: lattice-wide; ``app=``: another app's.
    ``durable=True``: on file storage, else in memory. Items are any picklable object up
    to 1 MiB pickled. The queue is made on first use and lasts until ``delete()``.
    """

    def __init__(
        self,
        name: str,
        maxsize: int | None = None,
        shared: bool = False,
        durable: bool = False,
        *,
        app: str | None = None,
    ) -> None:
        self.name = check_name("Queue", name)
        self.scope = scope_of("Queue", name, shared=shared, app=app)
        self.label = label("Queue", name, self.scope)
        if maxsize is not None and (not isinstance(maxsize, int) or maxsize < 0):
            raise BadRequestError(f"{self.label}: maxsize must be an int ≥ 0, got {maxsize!r}")
        self.asked_maxsize = maxsize
        self.durable = durable
        self.record = (protocol.dict_bucket(durable), protocol.queue_record_key(self.scope, name))
        """Where its consumer's name is kept (``work_queues.consumer_of``)."""
        self._at: work_queues.Address | None = None
        self._maxsize: int | None = None
        """Where the queue is and what maxsize it has, once opened."""
        self._deleted = False
        """Seen deleted: this handle stays so (a new handle makes the queue anew)."""

    def __repr__(self) -> str:
        return f"<sp.{self.label}>"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_maxsize"] = state["_at"] = None  # the other process opens it for itself
        state["_deleted"] = False
        return state

    async def _open(self) -> tuple[work_queues.Address, int]:
        """Where the queue is and its maxsize, opening (or making) it on first use."""
        if self._deleted:
            raise self._gone()
        if self._at is None or self._maxsize is None:
            nc = await self.connection()
            stream = protocol.queue_stream(self.durable)
            subject = protocol.queue_subject(self.durable, self.scope, self.name)
            asked = self.asked_maxsize or 0
            at, has = await work_queues.open_queue(nc, stream, subject, self.record, asked)
            if self.asked_maxsize is not None and has != self.asked_maxsize:
                raise BadRequestError(
                    f"{self.label} exists with maxsize {has}, not {self.asked_maxsize}: "
                    "give the same maxsize, or none, or delete() it first"
                )
            self._at, self._maxsize = at, has
        return self._at, self._maxsize

    def _gone(self) -> NotFoundError:
        self._deleted = True
        return NotFoundError(
            f"{self.label} was deleted; make it again with sp.Queue({self.name!r}, ...) "
            "to use that name again"
        )

    @property
    def maxsize(self) -> int:
        """The most items it holds (0: no limit)."""
        return self.run(self._open())[1]

    # --- methods, each also as ``.aio`` ---------------------------------------------

    @dual
    async def put(self, item: Any, timeout: float | None = None) -> None:
        """Add ``item``, waiting up to ``timeout`` s for room (None: as long as it takes);
        ``queue.Full`` when there is still none."""
        await self._put([encode(item, f"an item put on {self.label}")], timeout)

    @dual
    async def put_many(self, items: Iterable[Any], timeout: float | None = None) -> None:
        """Add all ``items`` at once, or none of them (``queue.Full`` after ``timeout``
        when there is no room for all); at most 1,000 in one call."""
        encoded = [encode(v, f"item {i} put on {self.label}") for i, v in enumerate(items)]
        if len(encoded) > PUT_MANY_MAX:
            raise BadRequestError(
                f"{self.label}: put_many takes at most {PUT_MANY_MAX:,} items at once (one "
                f"atomic write), got {len(encoded):,}"
            )
        if encoded:
            await self._put(encoded, timeout)

    async def _put(self, items: list[bytes], timeout: float | None) -> None:
        check_timeout(timeout, self.label)
        at, maxsize = await self._open()
        if maxsize and len(items) > maxsize:
            raise BadRequestError(
                f"{self.label}: {len(items)} items can never fit in maxsize {maxsize}"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = FULL_RECHECK_S[0]
        while True:
            try:
                if await work_queues.try_put(await self.connection(), at, items, maxsize):
                    return
            except work_queues.Gone:
                raise self._gone() from None
            if deadline is not None and time.monotonic() >= deadline:
                raise queue.Full(f"{self.label} is full ({maxsize} items)")
            wait = pause if deadline is None else min(pause, deadline - time.monotonic())
            await asyncio.sleep(max(wait, 0.0))
            pause = min(pause * 2, FULL_RECHECK_S[1])

    @dual
    async def get(self, timeout: float | None = None) -> Any:
        """Take the oldest item, waiting up to ``timeout`` s for one (None: as long as it
        takes, 0: not at all); ``queue.Empty`` when there is none."""
        return (await self._take(1, timeout))[0]

    @dual
    async def get_many(self, n: int, timeout: float | None = None) -> list[Any]:
        """Take up to ``n`` items: waits as ``get`` for the first, then takes what is
        there; ``queue.Empty`` when there is none."""
        if not isinstance(n, int) or n < 1:
            raise BadRequestError(f"{self.label}: get_many takes n ≥ 1 items, got {n!r}")
        return await self._take(n, timeout)

    async def _take(self, n: int, timeout: float | None) -> list[Any]:
        check_timeout(timeout, self.label)
        at = (await self._open())[0]
        nc = await self.connection()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = work_queues.LONG_POLL_S if deadline is None else deadline - time.monotonic()
            try:
                taken = await work_queues.take(nc, at, n, min(left, work_queues.LONG_POLL_S))
            except work_queues.Gone:
                raise self._gone() from None
            if taken:
                return [decode(data) for data in taken]
            if deadline is not None and time.monotonic() >= deadline:
                raise queue.Empty(f"{self.label} is empty")

    @dual
    async def qsize(self) -> int:
        """How many items it holds (``len(q)``), those being taken included."""
        at = (await self._open())[0]
        found = await work_queues.info(await self.connection(), at)
        if found is None:
            raise self._gone()
        return work_queues.count(found)

    def __len__(self) -> int:
        return self.qsize()

    @dual
    async def delete(self) -> None:
        """Remove the queue and its items: a ``get`` or ``put`` through any handle that
        used it raises ``NotFoundError`` (a new ``sp.Queue`` of the name makes it anew)."""
        at = (await self._open())[0]
        await work_queues.drop(await self.connection(), at, self.record)
        self._deleted = True
