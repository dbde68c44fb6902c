"""Many small concurrent requests over one wildcard inbox: the shared dicts' hot path.

nats-py's ``request`` spends most of a small request's client time on its own
bookkeeping (a fresh NUID and random token, and an ``asyncio.wait_for`` task per
request). Shared dict reads and writes are small and many, so they go through one
subscription on ``<inbox>.*`` per connection, numbered tokens, and one sweeper task for
their timeouts instead (measured in docs: "Shared dicts and queues").
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import weakref

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

SWEEP_S = 0.25
"""How often expired requests are failed."""


class Requests:
    """Request/reply on one connection, answers matched by a counter in the subject."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._seq = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._started: asyncio.Future[None] | None = None
        self._deadlines: collections.deque[tuple[float, asyncio.Future[Msg]]] = collections.deque()
        """In the order they were asked: one timeout for all requests (the same for
        every caller here), so the oldest expire first."""
        self._sweeper: asyncio.Task[None] | None = None

    async def _sweep(self) -> None:
        """Fail the requests whose deadline passed, checked every SWEEP_S while any is
        waiting: cheaper than a timer per request, at the cost of up to SWEEP_S late."""
        loop = asyncio.get_running_loop()
        try:
            while self._deadlines:  # ends when idle: no task outlives the work
                await asyncio.sleep(SWEEP_S)
                now = loop.time()
                while self._deadlines and (
                    self._deadlines[0][1].done() or self._deadlines[0][0] <= now
                ):
                    _expire(self._deadlines.popleft()[1])
        finally:
            self._sweeper = None

    async def _start(self) -> None:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            inbox = self._nc.new_inbox()
            self._prefix = inbox + "."
            try:
                await self._nc.subscribe(
                    inbox + ".*", cb=self._answer, pending_msgs_limit=-1, pending_bytes_limit=-1
                )
            except BaseException as exc:
                self._started.set_exception(exc)
                self._started = None
                raise
            self._started.set_result(None)
        await self._started

    async def _answer(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(
        self, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float
    ) -> Msg:
        """The answer; ``nats.errors.TimeoutError`` or ``NoRespondersError`` as nats-py's."""
        if self._started is None or not self._started.done():
            await self._start()
        token = str(next(self._seq))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        self._deadlines.append((loop.time() + timeout, future))
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        try:
            await self._nc.publish(subject, data, reply=self._prefix + token, headers=headers)
            msg = await future
        finally:
            self._waiting.pop(token, None)
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


_by_connection: weakref.WeakKeyDictionary[NATS, Requests] = weakref.WeakKeyDictionary()


def requests_for(nc: NATS) -> Requests:
    """The connection's one ``Requests``."""
    found = _by_connection.get(nc)
    if found is None:
        found = _by_connection[nc] = Requests(nc)
    return found
