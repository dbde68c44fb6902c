"""The shared queues on the wire: one subject and one pull consumer per queue, in a
work-queue stream shared by every app (``protocol.queue_stream``).

A queue exists while its consumer does: ``delete`` removes it, and a pull from a
consumer that is gone has no responder, which is how a ``get`` on a deleted queue
knows. The consumer's name is random and kept in the dict bucket under the queue's
scope (``protocol.queue_record_key``): a pull names only the consumer, so only those
who may read that scope can find it. Its ``maxsize`` is kept in the consumer's
metadata, and a put lands only when the count it read still holds: the write names
the subject's last sequence (``Nats-Expected-Last-Subject-Sequence``), so two
producers that both saw room for one item cannot both add one. Several items go in
one atomic batch: all or none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from superpose import protocol
from superpose.errors import LatticeError
from superpose.lattice import shared_kv
from superpose.lattice.batch import js_api
from superpose.lattice.shared_kv import Conflict, publish

TIMEOUT_S = 5.0
ACK_WAIT_S = 30.0
"""An item taken by a reader that dies before acknowledging it comes back after this."""
LONG_POLL_S = 30.0
"""A ``get`` with no timeout asks again this often (a pull request must expire)."""
MAXSIZE_KEY = "sp_maxsize"
NS = 1_000_000_000


class Gone(LatticeError):
    """The queue's consumer is not there: the queue was deleted (or never made)."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where one queue lives: its stream, subject and consumer."""

    stream: str
    subject: str
    consumer: str


def new_consumer_name() -> str:
    """Random, so nobody can pull from a queue whose name record they may not read: a
    pull's subject names only the consumer, which no permission can pin to an app."""
    return "q" + secrets.token_hex(16)


async def consumer_of(nc: NATS, bucket: str, record_key: str) -> str:
    """The queue's consumer name from its record, made (create-only) on first use."""
    entry = await shared_kv.get(nc, bucket, record_key)
    if entry.value is not None:
        return entry.value.decode()
    name = new_consumer_name()
    try:
        await shared_kv.put(nc, bucket, record_key, name.encode(), last=entry.revision)
    except shared_kv.Conflict:  # another process made it first: use theirs
        entry = await shared_kv.get(nc, bucket, record_key)
        if entry.value is None:
            raise LatticeError(f"queue record {record_key} vanished while made") from None
        return entry.value.decode()
    return name


async def info(nc: NATS, at: Address) -> dict[str, object] | None:
    """The consumer's info, or None when the queue does not exist."""
    subject = protocol.consumer_info_subject(at.stream, at.consumer)
    reply = await nc.request(subject, b"", timeout=TIMEOUT_S)
    answer = json.loads(reply.data or b"{}")
    error = answer.get("error")
    if error:
        if error.get("code") == 404:
            return None
        raise LatticeError(f"{subject}: {error.get('description', error)}")
    return dict(answer)


def recorded_maxsize(found: dict[str, object]) -> int:
    config = found.get("config")
    metadata = config.get("metadata", {}) if isinstance(config, dict) else {}
    return int(metadata.get(MAXSIZE_KEY, "0"))


def count(found: dict[str, object]) -> int:
    """Items waiting plus items taken and not yet acknowledged."""
    pending, unacked = found.get("num_pending"), found.get("num_ack_pending")
    return (pending if isinstance(pending, int) else 0) + (
        unacked if isinstance(unacked, int) else 0
    )


OPEN_ATTEMPTS = 20
OPEN_PAUSE_S = 0.05
"""A queue deleted while it is made again: the old consumer's filter overlaps the new
one's until it is gone, which the work-queue stream refuses; try again a little later."""


async def open_queue(
    nc: NATS, stream: str, subject: str, record: tuple[str, str], maxsize: int
) -> tuple[Address, int]:
    """Open the queue, or make it with ``maxsize``: its address and the maxsize it has.
    ``record``: the (bucket, key) of its consumer name."""
    for attempt in range(OPEN_ATTEMPTS):
        at = Address(stream, subject, await consumer_of(nc, *record))
        found = await info(nc, at)
        if found is not None:
            return at, recorded_maxsize(found)
        try:
            await _create(nc, at, maxsize)
        except LatticeError:
            found = await info(nc, at)  # made at once by another process?
            if found is not None:
                return at, recorded_maxsize(found)
            if attempt == OPEN_ATTEMPTS - 1:
                raise
            await asyncio.sleep(OPEN_PAUSE_S)
            continue
        entry = await shared_kv.get(nc, *record)
        if entry.value == at.consumer.encode():
            return at, maxsize
        await _delete_consumer(nc, at)  # deleted meanwhile: not brought back
    raise LatticeError(f"the queue on {subject} could not be opened: deleted as often")


async def _create(nc: NATS, at: Address, maxsize: int) -> None:
    body = {
        "stream_name": at.stream,
        "config": {
            "name": at.consumer,
            "durable_name": at.consumer,
            "filter_subject": at.subject,
            "ack_policy": "explicit",
            "ack_wait": int(ACK_WAIT_S * NS),
            "max_deliver": -1,
            "max_ack_pending": 100_000,
            "max_waiting": 4096,
            "metadata": {MAXSIZE_KEY: str(maxsize)},
        },
    }
    subject = protocol.filtered_consumer_subject(at.stream, at.consumer, at.subject)
    await js_api(nc, subject, body, timeout=TIMEOUT_S)


async def _delete_consumer(nc: NATS, at: Address) -> None:
    subject = protocol.consumer_delete_subject(at.stream, at.consumer)
    with contextlib.suppress(LatticeError):
        await js_api(nc, subject, {}, timeout=TIMEOUT_S)


async def _last_sequence(nc: NATS, at: Address) -> int:
    request = protocol.direct_get_last_subject(at.stream, at.subject)
    msg = await nc.request(request, b"", timeout=TIMEOUT_S)
    headers = msg.headers or {}
    if headers.get("Status") == "404":
        return 0
    if headers.get("Status"):
        raise LatticeError(f"reading {at.subject}'s last item failed: {headers.get('Status')}")
    return int(headers.get(protocol.SEQUENCE_HEADER, "0"))


async def try_put(nc: NATS, at: Address, items: Sequence[bytes], maxsize: int) -> bool:
    """Add every item, or none: False when they do not fit now (or another write came
    first: the caller tries again). Raises ``Gone`` for a deleted queue."""
    expect: dict[str, str] | None = None
    if maxsize > 0:  # before the count: a put in between moves it (no limit: no race)
        last = await _last_sequence(nc, at)
        expect = {protocol.EXPECTED_LAST_SUBJECT_SEQ_HEADER: str(last)}
    found = await info(nc, at)
    if found is None:
        raise Gone(f"no queue consumer {at.consumer}")
    if maxsize > 0 and count(found) + len(items) > maxsize:
        return False
    try:
        if len(items) == 1:
            await publish(nc, at.subject, items[0], expect, f"putting on {at.subject}")
        else:
            await _put_batch(nc, at.subject, items, expect)
    except Conflict:
        return False
    return True


async def _put_batch(
    nc: NATS, subject: str, items: Sequence[bytes], first: dict[str, str] | None
) -> None:
    """One atomic batch: the stream stores all of it or none."""
    batch = uuid.uuid4().hex
    for seq, item in enumerate(items, start=1):
        headers = {"Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(seq)}
        if seq == 1 and first:
            headers.update(first)
        if seq < len(items):
            await nc.publish(subject, item, headers=headers)
        else:
            headers["Nats-Batch-Commit"] = "1"
            await publish(nc, subject, item, headers, f"putting {len(items)} items on {subject}")


async def take(nc: NATS, at: Address, n: int, wait_s: float) -> list[bytes]:
    """Up to ``n`` items, waiting up to ``wait_s`` for the first (0: not at all); each
    acknowledged (so removed) before it is returned. Raises ``Gone``."""
    first = await _pull(nc, at, 1, wait_s)
    if not first:
        return []
    more = await _pull(nc, at, n - 1, 0.0) if n > 1 else []
    taken = first + more
    for msg in taken[:-1]:
        await nc.publish(msg.reply, b"+ACK")
    await nc.request(taken[-1].reply, b"+ACK", timeout=TIMEOUT_S)  # after all the others
    return [msg.data for msg in taken]


async def _pull(nc: NATS, at: Address, n: int, wait_s: float) -> list[Msg]:
    """One pull request for up to ``n`` messages; those that came before it ended. A
    consumer that is gone has no responder (a 503 status on the inbox): ``Gone``."""
    inbox = nc.new_inbox()
    got: list[Msg] = []
    statuses: list[str] = []
    ended = asyncio.Event()

    async def on_message(msg: Msg) -> None:
        status = (msg.headers or {}).get("Status")
        if status or not msg.reply:
            statuses.append(status or "")  # 404 no messages, 408 expired, 503 gone
            ended.set()
            return
        got.append(msg)
        if len(got) >= n:
            ended.set()

    sub = await nc.subscribe(inbox, cb=on_message)
    try:
        body: dict[str, object] = {"batch": n}
        if wait_s <= 0:
            body["no_wait"] = True
        else:
            body["expires"] = int(wait_s * NS)
        request = protocol.consumer_next_subject(at.stream, at.consumer)
        await nc.publish(request, json.dumps(body).encode(), reply=inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), max(wait_s, 0.0) + TIMEOUT_S)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    if "503" in statuses:
        raise Gone(f"no queue consumer {at.consumer}")
    return got


async def drop(nc: NATS, at: Address, record: tuple[str, str]) -> None:
    """Delete the queue: its record first (so nobody opens it again under this consumer),
    then what is left in it (so no item waits for a queue of the same name made later),
    then the consumer."""
    entry = await shared_kv.get(nc, *record)
    if entry.value == at.consumer.encode():  # not a queue made anew meanwhile
        with contextlib.suppress(shared_kv.Conflict):
            await shared_kv.delete(nc, *record, last=entry.revision)
    with contextlib.suppress(Gone):
        while await take(nc, at, 1000, 0.0):
            pass
    await _delete_consumer(nc, at)
