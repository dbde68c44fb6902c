"""Storing durable results: in atomic batches, then telling their callers.

A JetStream write costs an fsync, so one store is in flight per node and the
results that finish meanwhile form the next batch. Failures are dead-lettered
first: once a result is stored a redelivery skips the item, so a letter written
after it could be lost with the node. Each caller then gets one notification per
batch, and only then is each item settled (its envelope acked once all are).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from superpose import protocol
from superpose.lattice import results
from superpose.node.link import Connected
from superpose.support.retry import THROUGH_ELECTION, retry

log = logging.getLogger("superpose.node.durable")
STORE_RETRY = THROUGH_ELECTION
"""Between tries of a write that failed. A stream whose leader died has none for the
4-9 s NATS's Raft takes to elect one (no responders: each try fails at once), so
the pause stays short to land the first write the new leader takes; jittered, so
the nodes that failed together do not come back in step."""
WRITE_ATTEMPT_S = 3.0
"""How long one try may wait for its acknowledgement. A write sent just before its
server (or the stream's leader) died is never answered, and waiting out the
request's own 10 s timeout was most of what a failover cost a durable caller.
A write is safe to repeat (results by key, envelopes by message id), and a batch
of results takes well under a second to commit even on a busy machine."""
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Finished(Generic[T]):
    """A durable item's final result, with what is needed to store and settle it."""

    item: T
    """Handed back to ``settled`` once stored."""
    inv: protocol.Invocation
    data: bytes
    """The encoded invocation (kept in its dead letter for replay)."""
    result: protocol.Result


class ResultStore(Generic[T]):
    def __init__(self, host: Connected, settled: Callable[[T], None]) -> None:
        self.host = host
        self._settled = settled
        """Called with each item once its result is stored and its caller told."""
        self._to_store: list[Finished[T]] = []
        self._storing = False

    def add(self, finished: Finished[T]) -> None:
        self._to_store.append(finished)
        if not self._storing:
            self._storing = True
            asyncio.get_running_loop().create_task(self._store_loop())

    async def _store_loop(self) -> None:
        try:
            await asyncio.sleep(0)  # let this loop iteration's results join the batch
            while self._to_store:
                batch, self._to_store = self._to_store, []
                await self._store(batch)
        finally:
            self._storing = False

    async def _store(self, batch: list[Finished[T]]) -> None:
        for finished in batch:
            if finished.result.error is not None:
                await self._dead_letter(finished)
        encoded = [(f.result.id, f.result.encode()) for f in batch]
        nc = self.host.nc
        await until_done(lambda: results.store_many(nc, encoded), f"store {len(batch)} results")
        by_caller: dict[str, list[bytes]] = {}
        for finished, (_, data) in zip(batch, encoded, strict=True):
            if finished.inv.notify:
                by_caller.setdefault(finished.inv.notify, []).append(data)
        # One message per caller and batch: a message per result was a fifth of the
        # server's and the caller's work per no-op durable call.
        for subject, datas in by_caller.items():
            for message in protocol.pack_results(datas):
                try:
                    await nc.publish(subject, message)
                except Exception:
                    log.debug("notify failed; the caller will find the stored results")
        for finished in batch:
            self._settled(finished.item)

    async def _dead_letter(self, finished: Finished[T]) -> None:
        error = finished.result.error
        assert error is not None
        if error.kind == protocol.ERR_CANCELLED:
            return
        inv = finished.inv
        letter = protocol.DeadLetter(
            id=inv.id,
            app=inv.app,
            fn=inv.fn,
            invocation=finished.data,
            error=error,
            attempts=inv.attempt,
            failed=time.time(),
        )
        try:
            await self.host.assets.dead.put(inv.id, letter.encode())
        except Exception:
            log.warning("cannot record dead letter %s", inv.id, exc_info=True)


async def until_done(attempt: Callable[[], Awaitable[R]], what: str) -> R:
    """Retry a lattice write (or a read a decision hangs on) until it lands: JetStream
    keeps our envelopes meanwhile, and if the node dies first they are redelivered."""

    def retrying(error: BaseException, failures: int) -> None:
        if failures == 1:  # once per outage: a leader election fails ~20 tries
            log.warning("could not %s; retrying", what, exc_info=error)

    async def bounded() -> R:
        return await asyncio.wait_for(attempt(), WRITE_ATTEMPT_S)

    return await retry(bounded, backoff=STORE_RETRY, on_failure=retrying)
