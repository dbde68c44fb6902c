"""A node's side of the durable path: take envelopes, run their items, store, then ack.

Life of an envelope on a node: pulled (only while the node has room, see
``work_pull``) → items that already have a stored result are skipped (a
redelivery after a crash, a speculative copy, a cancelled item) → each item goes
to admission like any call, its result coming back with its executor's ``done``
frame → results are stored in atomic batches (``result_store``) → the envelope is
acked once every item is settled (stored, or handed on as a retry envelope).
Until then the node tells JetStream every two seconds that it is still at work; if
the node dies, the envelope is redelivered to another node when ACK_WAIT_S lapses.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.msg import Msg

from superpose import config, protocol
from superpose.lattice import results
from superpose.lattice.batch import publish_atomic
from superpose.lattice.work import work_message
from superpose.node.admission import Request
from superpose.node.cancels import Cancellations
from superpose.node.link import Connected
from superpose.node.result_store import Finished, ResultStore, until_done
from superpose.node.work_pull import WorkPuller
from superpose.support.retry import Backoff

log = logging.getLogger("superpose.node.durable")

RETRY_BACKOFF = Backoff(0.5, factor=2, max_s=30.0, jitter=0.5)
"""Before a durable invocation's next attempt: 0.5 s, doubling to 30 s, jittered."""
SPECULATIVE_BOUNCE_S = 0.2
RESULT_GRACE_S = 5.0


class DurableHost(Connected, Protocol):
    """What the durable worker needs of its node, and nothing more."""

    def accept(self, inv: protocol.Invocation, work: Request) -> None:
        """Run an item like any call (it answers on ``DurableWorker.reply``)."""

    def has_room(self) -> bool:
        """Fewer calls wait than the node can run at once: pull more work."""

    def cancel(self, inv_id: str) -> list[str]:
        """Kill the executor running ``inv_id``; the other calls that died with it."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


@dataclass
class Work:
    """One durable item as admission sees a call: its bytes and where its result goes."""

    data: bytes
    reply: str


@dataclass
class Envelope:
    msg: Msg
    id: str
    open_items: int
    delivered: int


@dataclass
class Item:
    inv: protocol.Invocation
    data: bytes
    envelope: Envelope
    timer: asyncio.TimerHandle | None = None
    settled: bool = False
    requeue: bool = False
    """Killed because a neighbour in its executor was cancelled: run again, same attempt."""
    answered: bool = False
    """Its current run's result reached this worker."""
    run: int = 0
    """Runs started here; a check scheduled for one run ignores the runs after it."""


class DurableWorker:
    def __init__(self, host: DurableHost) -> None:
        self.host = host
        self.envelopes: dict[str, Envelope] = {}
        self.items: dict[str, Item] = {}
        """Items this node holds, by invocation id (one copy per id per node)."""
        self.cancelled = Cancellations(host, self._cancel)
        self.puller = WorkPuller(host, self._take_soon)
        self.store: ResultStore[Item] = ResultStore(host, self._settle)
        self.max_deliver = config.settings().max_deliver

    @property
    def reply(self) -> str:
        """The reply of this node's items: their results come back with their ``done``."""
        return protocol.node_results_subject(self.host.node_id)

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        await self.cancelled.start(self.host.spawn)  # cancels made before we started
        await self.puller.add(protocol.WORK_CONSUMER)
        self.host.spawn(self.puller.run())
        self.host.spawn(self._keep_alive())

    def add_source(self, consumer: str) -> None:
        """Also pull from ``consumer`` (a needs class this node meets), from now on."""
        self.puller.add_source(consumer)

    async def stop_pulling(self) -> None:
        await self.puller.stop()

    def busy(self) -> bool:
        return bool(self.envelopes)

    def room(self) -> None:
        """A call finished: pull more if a pull was held back for want of room."""
        self.puller.room()

    # --- taking envelopes ------------------------------------------------------------

    def _take_soon(self, msg: Msg) -> None:
        # A task per envelope: its result lookup must not hold up the next delivery.
        asyncio.get_running_loop().create_task(self._take_safely(msg))

    async def _take_safely(self, msg: Msg) -> None:
        try:
            await self._take(msg)
        except Exception:
            log.exception("cannot take envelope; it will be redelivered")

    async def _take(self, msg: Msg) -> None:
        delivered = msg.metadata.num_delivered if msg.metadata else 1
        try:
            envelope = protocol.Envelope.decode(msg.data)
            invocations = [protocol.Invocation.decode(raw) for raw in envelope.items]
        except protocol.ProtocolError as exc:
            log.error("dropping an unreadable envelope: %s", exc)
            await msg.term()
            return
        if len(invocations) == 1 and invocations[0].id in self.items:
            await self._bounce(msg, envelope, invocations[0])
            return
        state = Envelope(msg, envelope.id, len(invocations), delivered)
        self.envelopes[envelope.id] = state
        stored = await self._stored(invocations) if delivered > 1 else {}
        open_items = [
            (inv, raw)
            for inv, raw in zip(invocations, envelope.items, strict=True)
            if inv.id not in stored and inv.id not in self.cancelled
        ]
        if delivered > 1 and len(open_items) > 1:
            await self._split(state, open_items)
            return
        for inv, raw in zip(invocations, envelope.items, strict=True):
            self._start_item(Item(inv, raw, state), stored)

    async def _stored(self, invocations: list[protocol.Invocation]) -> dict[str, protocol.Result]:
        """A redelivery: some items may have finished before the node that held it died.

        Asked until the lattice answers (the envelope is kept alive meanwhile): running
        an item whose lookup failed would run it twice whenever the result is there
        but the results stream is between leaders.
        """
        ids = [inv.id for inv in invocations]
        return await until_done(lambda: results.get_many(self.host.nc, ids), "look up results")

    def _start_item(self, item: Item, stored: dict[str, protocol.Result]) -> None:
        inv = item.inv
        if inv.id in stored or inv.id in self.items or inv.id in self.cancelled:
            self._settle(item)  # done already, running here already, or cancelled
            return
        if item.envelope.delivered > self.max_deliver:
            self._fail_lost(item)
            return
        self.items[inv.id] = item
        delay = inv.not_before - time.time()
        if delay > 0:
            item.timer = asyncio.get_running_loop().call_later(delay, self._run, item)
        else:
            self._run(item)

    async def _bounce(
        self, msg: Msg, envelope: protocol.Envelope, inv: protocol.Invocation
    ) -> None:
        """A speculative copy of an invocation this node is running: hand it back so
        another node takes it (the point of the copy), as a fresh envelope so the
        hand-back never counts as a failed delivery."""
        await asyncio.sleep(SPECULATIVE_BOUNCE_S)
        try:
            if inv.id not in await results.get_many(self.host.nc, [inv.id]):
                bounce_id = f"{envelope.id}.b{uuid.uuid4().hex[:8]}"
                await publish_atomic(self.host.nc, [work_message(inv, bounce_id, envelope.items)])
            await msg.ack()
        except Exception:  # it comes back by redelivery
            log.debug("could not hand back copy of %s", inv.id, exc_info=True)

    async def _split(
        self, state: Envelope, open_items: list[tuple[protocol.Invocation, bytes]]
    ) -> None:
        """A redelivered envelope goes back as one envelope per unfinished item.

        Its node died holding it: the items it never reached must not share the
        blame (the delivery count) of the one that may have killed it, and other
        nodes can now take them one by one.
        """
        messages = [
            work_message(inv, f"{state.id}.{state.delivered}.{i}", [raw])
            for i, (inv, raw) in enumerate(open_items)
        ]
        self.envelopes.pop(state.id, None)
        try:
            await publish_atomic(self.host.nc, messages)
        except Exception:  # not split: it comes back again, the split is tried again
            log.warning("cannot split envelope %s", state.id, exc_info=True)
            return
        await self._ack(state)
        self.puller.wake()

    # --- running items ---------------------------------------------------------------

    def _run(self, item: Item) -> None:
        item.timer = None
        if item.settled:
            return
        item.answered = False
        item.run += 1
        self.host.accept(item.inv, Work(item.data, self.reply))

    def call_ended(self, inv_id: str) -> None:
        """The call ended; its result must follow within RESULT_GRACE_S.

        A result that never arrives (lost with a dying connection) must not leave the
        item waiting forever: it runs again.
        """
        item = self.items.get(inv_id)
        if item is not None:
            loop = asyncio.get_running_loop()
            loop.call_later(RESULT_GRACE_S, self._check_answered, item, item.run)

    def _check_answered(self, item: Item, run: int) -> None:
        if item.settled or item.answered or item.timer is not None or item.run != run:
            return
        if self.items.get(item.inv.id) is not item:
            return
        log.warning("no result reached the node for %s; running it again", item.inv.id)
        self._run(item)

    def _fail_lost(self, item: Item) -> None:
        self.items[item.inv.id] = item
        error = protocol.ErrorInfo(
            protocol.ERR_LOST,
            "NodeLost",
            f"{item.inv.app}.{item.inv.fn} ({item.inv.id}) was delivered "
            f"{item.envelope.delivered} times and its node died each time",
        )
        self._finish(item, protocol.Result(item.inv.id, self.host.node_id, error=error))

    # --- results ---------------------------------------------------------------------

    def result_arrived(self, data: bytes) -> None:
        """An executor's result of an item of ours, with its ``done`` frame (items run
        only on the node that pulled them, so results never need NATS)."""
        try:
            result = protocol.Result.decode(data)
        except protocol.ProtocolError:
            log.error("unreadable durable result dropped")
            return
        item = self.items.get(result.id)
        if item is None or item.settled:
            return
        item.answered = True
        if result.id in self.cancelled:
            self._settle(item)  # the canceller stored the verdict
            return
        error = result.error
        if error is not None and item.requeue:
            item.requeue = False
            self._run(item)
            return
        if error is not None and _retryable(item.inv, error):
            asyncio.get_running_loop().create_task(self._retry(item, error))
            return
        self._finish(item, result)

    def _finish(self, item: Item, result: protocol.Result) -> None:
        result.attempts = item.inv.attempt
        result.finished = time.time()
        self.store.add(Finished(item, item.inv, item.data, result))

    async def _retry(self, item: Item, error: protocol.ErrorInfo) -> None:
        """Hand the item on as a new envelope with the next attempt, after a backoff."""
        inv = item.inv
        if self.items.get(inv.id) is item:  # its next attempt may be delivered back here
            del self.items[inv.id]
        delay = RETRY_BACKOFF.pause_s(inv.attempt)
        inv.attempt += 1
        inv.not_before = time.time() + delay
        message = work_message(inv, f"{inv.id}.a{inv.attempt}", [inv.encode()])
        log.info(
            "↻ %s.%s %s attempt %d in %.1f s after %s",
            inv.app,
            inv.fn,
            inv.id,
            inv.attempt,
            delay,
            error.type,
        )
        await until_done(
            lambda: publish_atomic(self.host.nc, [message]), f"queue retry of {inv.id}"
        )
        self._settle(item)

    def _settle(self, item: Item) -> None:
        if item.settled:
            return
        item.settled = True
        if item.timer is not None:
            item.timer.cancel()
        if self.items.get(item.inv.id) is item:
            del self.items[item.inv.id]
        envelope = item.envelope
        envelope.open_items -= 1
        if envelope.open_items == 0:
            self.envelopes.pop(envelope.id, None)
            asyncio.get_running_loop().create_task(self._ack(envelope))
            self.puller.wake()

    async def _ack(self, envelope: Envelope) -> None:
        try:
            await envelope.msg.ack()
        except Exception:  # redelivered later; every item then finds its stored result
            log.debug("ack of %s failed", envelope.id, exc_info=True)

    async def _keep_alive(self) -> None:
        """Tell JetStream we still hold our envelopes, so a long function is not run twice."""
        while True:
            await asyncio.sleep(protocol.IN_PROGRESS_EVERY_S)
            for envelope in list(self.envelopes.values()):
                try:
                    await envelope.msg.in_progress()
                except Exception:
                    log.debug("in-progress for %s failed", envelope.id, exc_info=True)

    # --- cancellation ----------------------------------------------------------------

    def _cancel(self, inv_id: str) -> None:
        """A newly cancelled id: drop it if it waits for its retry time, kill it if it
        runs here (its executor's other items run again, same attempt)."""
        item = self.items.get(inv_id)
        if item is None:
            return
        if item.timer is not None:  # waiting for its retry time: drop it
            self._settle(item)
            return
        for neighbour in self.host.cancel(inv_id):
            other = self.items.get(neighbour)
            if other is not None:
                other.requeue = True


def _retryable(inv: protocol.Invocation, error: protocol.ErrorInfo) -> bool:
    if inv.attempt > inv.retries:
        return False
    if error.kind in protocol.INFRASTRUCTURE_ERRORS:
        return True
    if error.kind != protocol.ERR_RAISED or not inv.retry_on:
        return False
    names = error.types or [error.type]
    return any(n == wanted or n.endswith("." + wanted) for n in names for wanted in inv.retry_on)
