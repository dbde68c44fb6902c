"""A node's side of the durable path: pull envelopes, run their items, store, then ack.

Life of an envelope on a node: pulled (only while the node has room) →
items that already have a stored result are skipped (a redelivery after a
crash, a speculative copy, a cancelled item) → each item goes to the agent
like any call, its result coming back on the node's results subject → results
are stored in atomic batches → the envelope is acked once every item is
settled (stored, or handed on as a retry envelope). Until then the node tells
JetStream every two seconds that it is still at work; if the node dies, the
envelope is redelivered to another node when ACK_WAIT_S lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from superpose import config, protocol
from superpose.lattice import results
from superpose.lattice.batch import publish_atomic
from superpose.lattice.mirror import follow_bucket
from superpose.lattice.work import work_message

if TYPE_CHECKING:
    from superpose.node.agent import NodeAgent

log = logging.getLogger("superpose.node.durable")

PULL_EXPIRES_S = 5.0
RETRY_BASE_S = 0.5
RETRY_MAX_S = 30.0
STORE_RETRY_S = 0.5
PREFETCH_ENVELOPES = 2
SPECULATIVE_BOUNCE_S = 0.2
RESULT_GRACE_S = 5.0
CANCELS_LOAD_S = 5.0
NS = 1_000_000_000


@dataclass
class Work:
    """One durable item as the agent sees a call: its bytes and where its result goes."""

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
    """Its current run's result reached this worker (results travel over NATS)."""
    run: int = 0
    """Runs started here; a check scheduled for one run ignores the runs after it."""


@dataclass
class _Credit:
    expires: float
    remaining: int


@dataclass
class _Source:
    """One consumer this node pulls from: ``anywhere``, or a needs class it meets."""

    consumer: str
    inbox: str
    credits: list[_Credit] = field(default_factory=list)
    subscription: Subscription | None = None

    @property
    def next_subject(self) -> str:
        return protocol.consumer_next_subject(protocol.WORK_STREAM, self.consumer)


@dataclass
class DurableWorker:
    agent: NodeAgent
    envelopes: dict[str, Envelope] = field(default_factory=dict)
    items: dict[str, Item] = field(default_factory=dict)
    """Items this node holds, by invocation id (one copy per id per node)."""
    cancelled: set[str] = field(default_factory=set)
    _sources: dict[str, _Source] = field(default_factory=dict)
    _to_store: list[tuple[Item, protocol.Result]] = field(default_factory=list)
    _storing: bool = False
    _subs: list[Subscription] = field(default_factory=list)
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    _held_back: bool = False
    """The last pull asked for less because the node's queue was full."""
    _pulling: bool = True
    max_deliver: int = field(default_factory=lambda: config.max_deliver(protocol.MAX_DELIVER))

    @property
    def reply(self) -> str:
        return protocol.node_results_subject(self.agent.config.node_id)

    # --- lifecycle ---------------------------------------------------------------

    async def start(self, spawn: Callable[..., None]) -> None:
        nc = self.agent.nc
        self._subs.append(await nc.subscribe(protocol.CANCEL_SUBJECT, cb=self._on_cancel))
        loaded = asyncio.Event()
        spawn(self._follow_cancels(loaded))
        with contextlib.suppress(TimeoutError):  # cancellations made before we started
            await asyncio.wait_for(loaded.wait(), CANCELS_LOAD_S)
        await self._add_source(protocol.WORK_CONSUMER)
        spawn(self._pull_loop())
        spawn(self._keep_alive())

    def add_source(self, consumer: str) -> None:
        """Also pull from ``consumer`` (a needs class this node meets), from now on."""
        if consumer not in self._sources and self._pulling:
            self.agent._spawn(self._add_source(consumer))

    async def _add_source(self, consumer: str) -> None:
        if consumer in self._sources:
            return
        inbox = self.agent.nc.new_inbox()
        source = _Source(consumer, inbox)
        self._sources[consumer] = source

        async def deliver(msg: Msg) -> None:
            await self._on_delivery(source, msg)

        source.subscription = await self.agent.nc.subscribe(
            inbox,
            cb=deliver,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        log.info("pulling durable work from %s", consumer)
        self._room.set()

    async def stop_pulling(self) -> None:
        self._pulling = False
        for source in list(self._sources.values()):
            if source.subscription is not None:
                await source.subscription.unsubscribe()
        self._sources.clear()

    def busy(self) -> bool:
        return bool(self.envelopes)

    def room(self) -> None:
        """The agent finished a call: pull more if a pull was held back for want of room.
        (Not on every call: a wake-up of the pull loop per warm call cost the agent 8 %.)"""
        if self._held_back:
            self._room.set()

    # --- pulling -------------------------------------------------------------------

    def _wanted(self, source: _Source) -> int:
        """Envelopes to ask for now: only while the node has idle capacity."""
        now = time.monotonic()
        source.credits = [c for c in source.credits if c.expires > now and c.remaining > 0]
        outstanding = sum(c.remaining for c in source.credits)
        waiting = self.agent.queued
        if waiting >= self.agent.capacity():
            self._held_back = True
            return 0
        return max(0, PREFETCH_ENVELOPES - outstanding)

    async def _pull_loop(self) -> None:
        while True:
            self._room.clear()
            self._held_back = False
            for source in list(self._sources.values()):
                await self._pull(source)
            with contextlib.suppress(TimeoutError):  # wake on room, or as pulls expire
                await asyncio.wait_for(self._room.wait(), PULL_EXPIRES_S / 5)

    async def _pull(self, source: _Source) -> None:
        wanted = self._wanted(source)
        if not wanted:
            return
        request = {"batch": wanted, "expires": int(PULL_EXPIRES_S * NS)}
        try:
            await self.agent.nc.publish(
                source.next_subject, json.dumps(request).encode(), reply=source.inbox
            )
            source.credits.append(_Credit(time.monotonic() + PULL_EXPIRES_S, wanted))
        except Exception:
            log.debug("pull request failed; retrying", exc_info=True)

    async def _on_delivery(self, source: _Source, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        credit = next((c for c in source.credits if c.remaining > 0), None)
        if status is not None:  # 404/408/409: the pull ended with fewer messages
            if status in ("404", "408", "409") and credit is not None:
                pending = int(headers.get("Nats-Pending-Messages", "0") or 0)
                credit.remaining -= min(credit.remaining, pending or credit.remaining)
                self._room.set()
            return
        if credit is not None:
            credit.remaining -= 1
        self._room.set()  # the credit is used: ask for the next envelope while this one runs
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
        except Exception as exc:
            log.error("dropping an unreadable envelope: %s", exc)
            await msg.term()
            return
        if len(invocations) == 1 and invocations[0].id in self.items:
            await self._bounce(msg, envelope, invocations[0])
            return
        state = Envelope(msg, envelope.id, len(invocations), delivered)
        self.envelopes[envelope.id] = state
        stored: dict[str, protocol.Result] = {}
        if delivered > 1:  # a redelivery: some items may have finished before the node died
            try:
                stored = await results.get_many(self.agent.nc, [inv.id for inv in invocations])
            except Exception:
                log.warning("result lookup failed; running the envelope", exc_info=True)
        open_items = [
            (inv, raw)
            for inv, raw in zip(invocations, envelope.items, strict=True)
            if inv.id not in stored and inv.id not in self.cancelled
        ]
        if delivered > 1 and len(open_items) > 1:
            await self._split(state, open_items)
            return
        now = time.time()
        for inv, raw in zip(invocations, envelope.items, strict=True):
            item = Item(inv, raw, state)
            if inv.id in stored or inv.id in self.items or inv.id in self.cancelled:
                self._settle(item)  # done already, running here already, or cancelled
                continue
            if delivered > self.max_deliver:
                self._fail_lost(item)
                continue
            self.items[inv.id] = item
            delay = inv.not_before - now
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
            if inv.id not in await results.get_many(self.agent.nc, [inv.id]):
                bounce_id = f"{envelope.id}.b{uuid.uuid4().hex[:8]}"
                await publish_atomic(self.agent.nc, [work_message(inv, bounce_id, envelope.items)])
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
            await publish_atomic(self.agent.nc, messages)
        except Exception:  # not split: it comes back again, the split is tried again
            log.warning("cannot split envelope %s", state.id, exc_info=True)
            return
        await self._ack(state)
        self._room.set()

    def _run(self, item: Item) -> None:
        item.timer = None
        if item.settled:
            return
        item.answered = False
        item.run += 1
        self.agent.accept(item.inv, Work(item.data, self.reply))

    def call_ended(self, inv_id: str) -> None:
        """The agent saw the call end; its result must follow within RESULT_GRACE_S.

        The executor publishes results over NATS: one published while the broker
        restarts can be lost. Then the item runs again instead of waiting forever.
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
        self._finish(item, protocol.Result(item.inv.id, self.agent.config.node_id, error=error))

    # --- results -------------------------------------------------------------------

    def result_arrived(self, data: bytes) -> None:
        """An executor's result of an item of ours, with its ``done`` frame (items run
        only on the node that pulled them, so results never need NATS)."""
        try:
            result = protocol.Result.decode(data)
        except ValueError:
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
        self._to_store.append((item, result))
        if not self._storing:
            self._storing = True
            asyncio.get_running_loop().create_task(self._store_loop())

    async def _store_loop(self) -> None:
        """One store in flight per node: results finishing meanwhile form the next batch.

        A JetStream write costs an fsync, so fewer, bigger batches are what scale.
        """
        try:
            await asyncio.sleep(0)  # let this loop iteration's results join the batch
            while self._to_store:
                batch, self._to_store = self._to_store, []
                await self._store(batch)
        finally:
            self._storing = False

    async def _store(self, batch: list[tuple[Item, protocol.Result]]) -> None:
        """Dead-letter failures, store, tell callers, then settle (maybe ack).

        Dead letters first: once a result is stored a redelivery skips the item, so
        a letter written after it could be lost with the node.
        """
        nc = self.agent.nc
        for item, result in batch:
            if result.error is not None:
                await self._dead_letter(item, result)
        encoded = [(result.id, result.encode()) for _, result in batch]
        await _until_done(lambda: results.store_many(nc, encoded), f"store {len(batch)} results")
        by_caller: dict[str, list[bytes]] = {}
        for (item, _), (_, data) in zip(batch, encoded, strict=True):
            if item.inv.notify:
                by_caller.setdefault(item.inv.notify, []).append(data)
        # One message per caller and batch: a message per result was a fifth of the
        # server's and the caller's work per no-op durable call.
        for subject, datas in by_caller.items():
            for message in protocol.pack_results(datas):
                try:
                    await nc.publish(subject, message)
                except Exception:
                    log.debug("notify failed; the caller will find the stored results")
        for item, _ in batch:
            self._settle(item)

    async def _dead_letter(self, item: Item, result: protocol.Result) -> None:
        assert result.error is not None
        if result.error.kind == protocol.ERR_CANCELLED:
            return
        letter = protocol.DeadLetter(
            id=item.inv.id,
            app=item.inv.app,
            fn=item.inv.fn,
            invocation=item.data,
            error=result.error,
            attempts=item.inv.attempt,
            failed=time.time(),
        )
        try:
            assert self.agent.assets is not None
            await self.agent.assets.dead.put(item.inv.id, letter.encode())
        except Exception:
            log.warning("cannot record dead letter %s", item.inv.id, exc_info=True)

    async def _retry(self, item: Item, error: protocol.ErrorInfo) -> None:
        """Hand the item on as a new envelope with the next attempt, after a backoff."""
        inv = item.inv
        if self.items.get(inv.id) is item:  # its next attempt may be delivered back here
            del self.items[inv.id]
        delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (inv.attempt - 1)) * random.uniform(0.5, 1.0)
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
        await _until_done(
            lambda: publish_atomic(self.agent.nc, [message]), f"queue retry of {inv.id}"
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
            self._room.set()

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

    async def _follow_cancels(self, loaded: asyncio.Event) -> None:
        """Watch the cancels bucket: a node that starts after a cancellation knows it."""
        assert self.agent.assets is not None

        def seen(key: str, value: bytes | None, deleted: bool) -> None:
            if not deleted:
                self._cancel_ids([key])

        await follow_bucket(self.agent.assets.cancels, seen, loaded, "cancels")

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            cancel = protocol.Cancel.decode(msg.data)
        except ValueError:
            return
        self._cancel_ids(cancel.ids)

    def _cancel_ids(self, ids: list[str]) -> None:
        for inv_id in ids:
            if inv_id in self.cancelled:
                continue
            self.cancelled.add(inv_id)
            item = self.items.get(inv_id)
            if item is None:
                continue
            if item.timer is not None:  # waiting for its retry time: drop it
                self._settle(item)
                continue
            for neighbour in self.agent.cancel(inv_id):
                other = self.items.get(neighbour)
                if other is not None:
                    other.requeue = True


async def _until_done(attempt: Callable[[], Awaitable[object]], what: str) -> None:
    """Retry a lattice write until it lands: JetStream keeps our envelopes meanwhile, and
    if the node dies first they are redelivered."""
    while True:
        try:
            await attempt()
            return
        except Exception:
            log.warning("could not %s; retrying", what, exc_info=True)
            await asyncio.sleep(STORE_RETRY_S)


def _retryable(inv: protocol.Invocation, error: protocol.ErrorInfo) -> bool:
    if inv.attempt > inv.retries:
        return False
    if error.kind in protocol.INFRASTRUCTURE_ERRORS:
        return True
    if error.kind != protocol.ERR_RAISED or not inv.retry_on:
        return False
    names = error.types or [error.type]
    return any(n == wanted or n.endswith("." + wanted) for n in names for wanted in inv.retry_on)
