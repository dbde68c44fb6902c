"""Cached calls' first lookups, gathered: one batch read per burst of calls.

A ``map`` over 1,000 cached items would otherwise cost 1,000 lookups (a direct get
and an asyncio task each) before any result comes back. Here a call made from any
thread joins a queue; one drain on the client's loop takes whatever has queued,
looks all of its keys up at once (``MemoStore.look_many``: one batch direct get, or
one get per key for a user the server refuses batches to) and answers every hit on
the spot, with no task of its own. While a batch is out, the next burst queues
behind it, so batches grow with the rate calls come in. A miss goes on alone
(``memo.settle``: claim or wait, run, store).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superpose import protocol
from superpose.client.futures import Future, fail
from superpose.client.threads import fire
from superpose.lattice.memo_store import MemoStore

if TYPE_CHECKING:
    from superpose.client.client import Client

log = logging.getLogger("superpose.memo")

Keyed = Any
"""A ``memo.Call`` (it has ``client`` and ``key``): typed loosely to avoid the cycle."""


@dataclass(frozen=True)
class Ways:
    """What a drain does with what it finds (``memo`` supplies them)."""

    store: Callable[[Client], Awaitable[MemoStore]]
    hit: Callable[[Keyed, protocol.MemoEntry, Future], None]
    miss: Callable[[Keyed, Future], Coroutine[Any, Any, None]]


class Lookups:
    """One client's queue of cached calls waiting for their first lookup."""

    def __init__(self, client: Client, ways: Ways) -> None:
        self.loop = client.loop  # not the client: ``_LOOKUPS`` holds this under it, weakly
        self.ways = ways
        self._lock = threading.Lock()
        self._queued: list[tuple[Keyed, Future]] = []
        self._draining = False
        self._misses: set[asyncio.Task[None]] = set()

    def add(self, call: Keyed, out: Future) -> None:
        """Queue a call (from any thread); the first of a burst starts the drain."""
        with self._lock:
            self._queued.append((call, out))
            if self._draining:
                return
            self._draining = True
        try:
            fire(self.loop, self._drain())
        except BaseException:  # the loop is gone (a closed client): no drain runs
            with self._lock:
                self._draining = False
                self._queued.clear()
            raise

    async def _drain(self) -> None:
        burst: list[tuple[Keyed, Future]] = []
        try:
            while True:
                with self._lock:
                    burst, self._queued = self._queued, []
                    if not burst:
                        self._draining = False
                        return
                await self._look(burst)
        except BaseException as exc:  # never strand a call: the next add drains again
            with self._lock:
                self._draining = False
            for _, out in burst:
                fail(out, exc)
            if not isinstance(exc, Exception):
                raise
            log.warning("cached calls' lookup failed: %s", exc, exc_info=exc)

    async def _look(self, burst: list[tuple[Keyed, Future]]) -> None:
        live = [(call, out) for call, out in burst if not out.done()]  # cancelled meanwhile
        if not live:
            return
        try:
            store = await self.ways.store(live[0][0].client)  # the one client of this queue
            found = await store.look_many([call.key for call, _ in live])
        except Exception as exc:  # the settle path retries, then runs uncached
            log.debug("batched cache lookup failed (%s): each call looks again", exc)
            found = {}
        now = time.time()
        for call, out in live:
            entry = found.get(call.key)
            if entry is not None and not entry.running and entry.until > now:
                self.ways.hit(call, entry, out)
                continue
            task = asyncio.get_running_loop().create_task(self.ways.miss(call, out))
            self._misses.add(task)  # held until done: the loop keeps weak references
            task.add_done_callback(self._misses.discard)


_LOOKUPS: weakref.WeakKeyDictionary[Client, Lookups] = weakref.WeakKeyDictionary()
_MADE = threading.Lock()


def lookups_of(client: Client, ways: Ways) -> Lookups:
    """The client's lookup queue, made on its first cached call."""
    lookups = _LOOKUPS.get(client)
    if lookups is None:
        with _MADE:
            lookups = _LOOKUPS.get(client)
            if lookups is None:
                lookups = _LOOKUPS[client] = Lookups(client, ways)
    return lookups
