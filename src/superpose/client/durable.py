"""A client's side of the durable path: persist invocations, then collect their results.

Submissions made in one burst are packed into envelopes and written in one
atomic batch (one fsync); a future counts as accepted once JetStream has
acknowledged its envelope. Nodes store each result, then notify the caller on
its notify subject; anything a caller missed while disconnected is found in
the results bucket by a periodic sweep, so no result depends on a message
arriving at the right moment.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from superpose import protocol
from superpose.client.futures import Future, fail
from superpose.client.reconnects import Reconnects
from superpose.errors import LatticeError, SuperposeError, as_superpose_error
from superpose.lattice import issued, payload, results
from superpose.lattice.batch import BATCH_TIMEOUT_S, Message, publish_atomic
from superpose.lattice.work import work_message
from superpose.support.outbox import Outbox
from superpose.support.retry import THROUGH_ELECTION, retry

log = logging.getLogger("superpose.client")

ACCEPT_DEADLINE_S = 30.0
"""How long a submission keeps trying to reach JetStream before it fails."""
ACCEPT_RETRY = THROUGH_ELECTION
"""Between tries of a submission. While the work stream elects a leader (4-9 s after
its server dies) every try is refused at once; a short pause lands the first try the
new leader takes, and the jitter keeps clients that failed together out of step."""
ACCEPT_ATTEMPT_S = 3.0
"""How long one try waits for JetStream's acknowledgement, plus ACCEPT_S_PER_MIB for
each MiB it carries (never past the request's own ``BATCH_TIMEOUT_S``). A publish sent
to a server as it died is never answered, and waiting out the request's whole timeout
was what a failover cost a caller; a repeat is safe, each envelope's message id is the
stream's de-duplication key."""
ACCEPT_S_PER_MIB = 1.0
SWEEP_EVERY_S = 5.0
SWEEP_AFTER_S = 5.0
"""Results not heard of this long after acceptance are looked up in the bucket."""
RECONNECT_POLL_S = 0.25
"""How often the sweep looks whether the connection reconnected."""
SWEEPS_AFTER_RECONNECT_S = (0.0, 1.0, 2.0, 4.0, 8.0)
"""After a reconnect the sweep runs at once, then after each of these pauses: a node
may store a result and notify this client on a server its subscription has not
reached yet, and a submission whose acknowledgement was lost with the old server is
accepted only when its repeat lands (seconds later), after the first sweeps."""
SWEEP_MAX_IDS = 4096
ENVELOPE_MAX_BYTES = 768 * 1024
"""Under NATS's default max_payload (1 MiB) with room for headers; arguments above
the spill threshold travel as blob references, so any one item fits."""
ITEMS_PER_ENVELOPE_DIVISOR = 16
"""A burst of n items travels in envelopes of about n/16 (1 to 256): few writes for
big bursts, and enough envelopes for every node to take a share of small ones."""

Resolve = Callable[[Future, protocol.Result], None]


@dataclass
class Durable:
    future: Future
    inv: protocol.Invocation
    raw_args: payload.Encoded
    accepted_at: float = 0.0
    on_accept: list[Callable[[BaseException | None], None]] = field(default_factory=list)


class Submitter:
    def __init__(
        self, nc: NATS, client_id: str, resolve: Resolve, cancels: KeyValue, issued: KeyValue
    ) -> None:
        self.nc = nc
        self.cancels = cancels
        self.issued = issued
        self._recorded: dict[str, int] = {}
        """The issued records this client has written: key → highest number."""
        self.client_id = client_id
        self.notify_subject = protocol.durable_notify_subject(client_id)
        self._resolve = resolve
        self.waiting: dict[str, Durable] = {}
        self._outbox: Outbox[Durable] = Outbox(asyncio.get_running_loop())
        """Submissions from any thread: a burst travels in few envelopes."""
        self._reconnects = Reconnects(nc)
        self.one_by_one = False
        """Look results up one direct get each: an executor's user may read only its own
        results, which a batch get's request subject cannot name."""

    def start(self, spawn: Callable[[Any], None]) -> None:
        """Its notifications arrive through its client's reply subscription (``on_notify``)."""
        spawn(self._send_loop())
        spawn(self._sweep_loop())

    def submit(self, durable: Durable) -> None:
        """Queue one invocation from any thread; one wake-up per burst."""
        durable.inv.notify = self.notify_subject
        self._outbox.put(durable)

    def fail_all(self, error: SuperposeError) -> None:
        for durable in list(self.waiting.values()) + self._outbox.take():
            fail(durable.future, error)
        self.waiting.clear()

    # --- sending -------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            burst = [d for d in await self._outbox.next_burst() if not d.future.cancelled()]
            if burst:
                await self._send(burst)

    async def _send(self, burst: list[Durable]) -> None:
        burst = await self._answer_repeats(burst)
        ready: list[Durable] = []
        for durable in burst:
            inv = durable.inv
            try:
                if inv.args.data is None and inv.args.blob is None:
                    inv.args = await payload.wrap(self.nc, durable.raw_args, inv.args.codec)
            except Exception as exc:
                fail(durable.future, as_superpose_error(exc))
                continue
            ready.append(durable)
        for durable in ready:
            self.waiting[durable.inv.id] = durable
        groups = _envelopes(ready)
        keyed = [_envelope_message(g) for g in groups if g[0].future.idempotency_key is not None]
        plain = [_envelope_message(g) for g in groups if g[0].future.idempotency_key is None]
        recording = asyncio.ensure_future(self._record_issued([d.inv.id for d in ready]))
        error = await self._publish(keyed, plain)
        await recording  # before any future counts as accepted: a cancel by id finds it
        now = time.monotonic()
        for durable in ready:
            if error is not None:
                self.waiting.pop(durable.inv.id, None)
                fail(durable.future, error)
            else:
                durable.accepted_at = now
                durable.future.accepted.set()
            for callback in durable.on_accept:
                callback(error)

    async def _answer_repeats(self, burst: list[Durable]) -> list[Durable]:
        """A repeated idempotency key whose result is stored gets that result, no new run."""
        keyed = [d.inv.id for d in burst if d.future.idempotency_key is not None]
        if not keyed:
            return burst
        try:
            found = await results.get_many(self.nc, keyed, one_by_one=self.one_by_one)
        except Exception:
            return burst  # the stream's de-duplication still drops a repeat
        for durable in burst:
            result = found.get(durable.inv.id)
            if result is not None:
                durable.future.accepted.set()
                for callback in durable.on_accept:
                    callback(None)
                self._resolve(durable.future, result)
        return [d for d in burst if d.inv.id not in found]

    async def _record_issued(self, ids: list[str]) -> None:
        """Record these ids in the issued bucket, alongside their envelopes' publish.

        A failure (after ACCEPT_DEADLINE_S of retries) does not fail the submission:
        the envelopes may have landed, and then they run. It is logged, because a cancel
        by id of these would answer that they were never issued.
        """
        due = {
            key: seq
            for key, seq in issued.marks(ids).items()
            if seq == 0 or seq > self._recorded.get(key, 0)
        }

        async def once() -> None:
            await asyncio.gather(*(issued.record(self.issued, k, s) for k, s in due.items()))

        if not due:
            return
        try:
            await retry(once, backoff=ACCEPT_RETRY, within_s=ACCEPT_DEADLINE_S)
        except Exception:
            log.warning("could not record %d invocation id(s) as issued", len(ids), exc_info=True)
            return
        for key, seq in due.items():
            self._recorded[key] = max(seq, self._recorded.get(key, 0))

    async def _publish(self, keyed: list[Message], plain: list[Message]) -> SuperposeError | None:
        """Persist the envelopes, retrying through reconnects; None once acknowledged.

        ``keyed`` envelopes carry an idempotency key's id as their message id.
        """
        deadline = time.monotonic() + ACCEPT_DEADLINE_S
        # Keyed envelopes go one by one: the stream answers a repeat of a key with a
        # duplicate ack, which would fail a whole atomic batch. The rest go in atomic
        # chunks, each retried on its own, so a duplicate error names that chunk only.
        step = protocol.ATOMIC_BATCH_MAX
        chunks = [[m] for m in keyed] + [plain[i : i + step] for i in range(0, len(plain), step)]
        for chunk in chunks:
            error = await self._publish_chunk(chunk, deadline)
            if error is not None:
                return error
        return None

    async def _publish_chunk(self, chunk: list[Message], deadline: float) -> SuperposeError | None:
        attempt_s = _attempt_s(chunk)

        async def once() -> None:
            try:
                await asyncio.wait_for(publish_atomic(self.nc, chunk), attempt_s)
            except Exception as exc:
                if "duplicate message id" not in str(exc):
                    raise  # a duplicate: a retry of a chunk that had landed, all of it there

        def retrying(error: BaseException, failures: int) -> None:
            log.debug("publishing envelopes failed; retrying", exc_info=error)

        within_s = max(0.0, deadline - time.monotonic())
        try:
            await retry(once, backoff=ACCEPT_RETRY, within_s=within_s, on_failure=retrying)
        except Exception as exc:
            return LatticeError(
                f"could not persist {len(chunk)} envelope(s) of invocations in "
                f"{ACCEPT_DEADLINE_S:g} s: {exc}"
            )
        return None

    # --- results ---------------------------------------------------------------------

    def on_notify(self, msg: Msg) -> None:
        try:
            batch = [protocol.Result.decode(data) for data in protocol.unpack_results(msg.data)]
        except protocol.ProtocolError:  # garbled: the sweep finds these results in the store
            log.warning("unreadable durable notification dropped")
            return
        for result in batch:
            self.deliver(result)

    def deliver(self, result: protocol.Result) -> None:
        durable = self.waiting.pop(result.id, None)
        if durable is not None:
            self._resolve(durable.future, result)

    async def _sweep_loop(self) -> None:
        """Find stored results whose notification never came (a reconnect, a lost message)."""
        while True:
            if await self._until_sweep():  # notifications may have been lost meanwhile
                for pause_s in SWEEPS_AFTER_RECONNECT_S:
                    await asyncio.sleep(pause_s)
                    await self._sweep(after=0.0)
            else:
                await self._sweep(after=SWEEP_AFTER_S)

    async def _until_sweep(self) -> bool:
        """Wait SWEEP_EVERY_S, or less if the connection reconnects meanwhile (then True)."""
        waited = 0.0
        while waited < SWEEP_EVERY_S:
            await asyncio.sleep(RECONNECT_POLL_S)
            waited += RECONNECT_POLL_S
            if self._reconnects.happened():
                return True
        return False

    async def _sweep(self, after: float) -> None:
        """Look up the results of invocations accepted over ``after`` seconds ago."""
        now = time.monotonic()
        stale = [
            inv_id
            for inv_id, d in self.waiting.items()
            if d.accepted_at and now - d.accepted_at > after
        ][:SWEEP_MAX_IDS]
        if not stale:
            return
        try:
            found = await results.get_many(self.nc, stale, one_by_one=self.one_by_one)
        except Exception:
            log.debug("result sweep failed; next time", exc_info=True)
            return
        for result in found.values():
            self.deliver(result)

    # --- cancellation ----------------------------------------------------------------

    async def cancel(self, ids: list[str]) -> list[str]:
        """Cancel invocations: queued ones never run, running ones are killed.

        Returns the ids that were cancelled (not already finished).
        """
        cancelled = await results.mark_cancelled(self.nc, ids, node=f"client-{self.client_id}")
        # Recorded for nodes that start later, then told to the running ones at once.
        await asyncio.gather(*(self.cancels.put(inv_id, b"") for inv_id in cancelled))
        if ids:
            await self.nc.publish(protocol.CANCEL_SUBJECT, protocol.Cancel(ids).encode())
        for inv_id in cancelled:
            durable = self.waiting.pop(inv_id, None)
            if durable is not None and not durable.future.done():
                durable.future.on_cancel = None  # already cancelling on the lattice
                durable.future.cancel()
        return cancelled

    async def speculate(self, inv_id: str) -> bool:
        """Run a second copy of a waiting invocation; the first result stored wins."""
        durable = self.waiting.get(inv_id)
        if durable is None:
            return False
        error = await self._publish([], [_envelope_message([durable])])
        return error is None


def _envelopes(ready: list[Durable]) -> list[list[Durable]]:
    """Consecutive items of the same function, in envelopes sized for the burst
    (and never bigger than ENVELOPE_MAX_BYTES of arguments)."""
    size = max(1, min(protocol.MAX_ENVELOPE_ITEMS, len(ready) // ITEMS_PER_ENVELOPE_DIVISOR))
    groups: list[list[Durable]] = []
    group_bytes = 0
    for durable in ready:
        item_bytes = len(durable.inv.args.data or b"") + 512
        if groups and group_bytes + item_bytes > ENVELOPE_MAX_BYTES:
            groups.append([durable])
            group_bytes = item_bytes
            continue
        group_bytes += item_bytes
        key = _subject_of(durable)
        solo = durable.future.idempotency_key is not None
        last = groups[-1] if groups else None
        if (
            last is None
            or solo
            or last[0].future.idempotency_key is not None
            or len(last) >= size
            or _subject_of(last[0]) != key
        ):
            groups.append([durable])
            group_bytes = item_bytes
        else:
            last.append(durable)
    return groups


def _attempt_s(chunk: list[Message]) -> float:
    mib = sum(len(m.data) for m in chunk) / 2**20
    return min(BATCH_TIMEOUT_S, ACCEPT_ATTEMPT_S + ACCEPT_S_PER_MIB * mib)


def _subject_of(durable: Durable) -> str:
    inv = durable.inv
    return protocol.work_subject(inv.app, inv.fn, inv.needs)


def _envelope_message(group: list[Durable]) -> Message:
    first = group[0]
    # A repeat of the same idempotency key is dropped by the stream's de-duplication.
    keyed = first.future.idempotency_key is not None
    envelope_id = first.inv.id if keyed else uuid.uuid4().hex
    return work_message(first.inv, envelope_id, [d.inv.encode() for d in group])


async def wait_accepted(future: Future, timeout: float = ACCEPT_DEADLINE_S + 10) -> str:
    """Wait until the lattice has persisted a durable submission; returns its id.

    Ends early with the submission's own error if it failed.
    """
    deadline = time.monotonic() + timeout
    while not future.accepted.is_set():
        if future.done():
            error = future.exception() if not future.cancelled() else None
            if error is not None:
                raise error
            break
        if time.monotonic() > deadline:
            raise SuperposeError(
                f"invocation {future.invocation_id} was not persisted in {timeout:g} s"
            )
        await asyncio.sleep(0.01)
    return future.invocation_id
