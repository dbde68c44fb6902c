"""Batched JetStream writes and reads that nats-py does not offer yet.

With ``sync_interval: always`` every stored message costs an fsync, so the
durable path writes in atomic batches (one fsync for up to 1,000 messages;
nats-server ≥ 2.12) and reads many keys in one batch direct get (≥ 2.11).
Both are plain NATS messages with documented headers, no private protocol.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.errors import LatticeError

BATCH_TIMEOUT_S = 10.0
MAX_INFLIGHT_BATCHES = 16
"""The server refuses more concurrently open batches per stream (it keeps 50)."""

SMALL_BATCH = 8
"""Measured: an atomic commit costs about as much as 12 separate fsync'd publishes."""

_inflight: dict[int, asyncio.Semaphore] = {}


@dataclass(slots=True)
class Message:
    subject: str
    data: bytes
    headers: dict[str, str] | None = None


async def js_api(nc: NATS, subject: str, body: dict[str, Any], timeout: float = 5.0) -> Any:
    """One JetStream API request; an error answer raises LatticeError naming it."""
    reply = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    answer = json.loads(reply.data or b"{}")
    error = answer.get("error")
    if error:
        raise LatticeError(f"{subject}: {error.get('description', error)}")
    return answer


async def publish_atomic(nc: NATS, messages: Sequence[Message]) -> None:
    """Store all messages (one stream) with one fsync per 1,000; raises if any failed.

    A batch either lands whole or not at all, so a caller that sees an error can
    publish the same messages again (with message ids, the stream drops repeats).
    A handful of messages go as plain concurrent publishes instead.
    """
    if len(messages) <= SMALL_BATCH:  # an atomic commit costs more than a few publishes
        await asyncio.gather(*(_one_batch(nc, [m]) for m in messages))
        return
    semaphore = _inflight.setdefault(id(nc), asyncio.Semaphore(MAX_INFLIGHT_BATCHES))
    step = protocol.ATOMIC_BATCH_MAX
    for start in range(0, len(messages), step):
        chunk = messages[start : start + step]
        async with semaphore:
            await _one_batch(nc, chunk)


async def _one_batch(nc: NATS, chunk: Sequence[Message]) -> None:
    if len(chunk) == 1:  # a batch of one is a plain publish
        only = chunk[0]
        reply = await nc.request(
            only.subject, only.data, headers=only.headers, timeout=BATCH_TIMEOUT_S
        )
        _check_ack(reply.data)
        return
    batch_id = uuid.uuid4().hex
    last = len(chunk)
    for seq, message in enumerate(chunk, start=1):
        headers = dict(message.headers or {})
        headers["Nats-Batch-Id"] = batch_id
        headers["Nats-Batch-Sequence"] = str(seq)
        if seq < last:
            await nc.publish(message.subject, message.data, headers=headers)
            continue
        headers["Nats-Batch-Commit"] = "1"
        reply = await nc.request(
            message.subject, message.data, headers=headers, timeout=BATCH_TIMEOUT_S
        )
        _check_ack(reply.data)


def _check_ack(data: bytes) -> None:
    try:
        answer = json.loads(data or b"{}")
    except ValueError as exc:
        raise LatticeError(f"unreadable JetStream publish ack: {data[:200]!r}") from exc
    error = answer.get("error")
    if error:
        raise LatticeError(f"JetStream refused a write: {error.get('description', error)}")
    if "stream" not in answer:
        raise LatticeError(f"no JetStream stream took the write: {data[:200]!r}")


async def get_last_many(
    nc: NATS, stream: str, subjects: Sequence[str], timeout: float = 5.0
) -> dict[str, bytes]:
    """The last message on each subject that has one, in one batch direct get."""
    found: dict[str, bytes] = {}
    step = 1000
    for start in range(0, len(subjects), step):
        found.update(await _get_chunk(nc, stream, subjects[start : start + step], timeout))
    return found


ONE_BY_ONE_CONCURRENCY = 64


async def get_last_each(
    nc: NATS, stream: str, subjects: Sequence[str], timeout: float = 5.0
) -> dict[str, bytes]:
    """As ``get_last_many``, one direct get per subject: for a user whose permissions
    name the subjects it may read (an executor's own results), which a batch get's
    request subject cannot say."""
    limit = asyncio.Semaphore(ONE_BY_ONE_CONCURRENCY)

    async def one(subject: str) -> tuple[str, bytes | None]:
        async with limit:
            request = protocol.direct_get_last_subject(stream, subject)
            try:
                msg = await nc.request(request, b"", timeout=timeout)
            except nats.errors.TimeoutError as exc:
                raise LatticeError(
                    f"direct get on {stream} got no answer in {timeout:g} s"
                ) from exc
        status = (msg.headers or {}).get("Status")
        return subject, (None if status else msg.data)

    pairs = await asyncio.gather(*(one(s) for s in subjects))
    return {subject: data for subject, data in pairs if data is not None}


async def _get_chunk(
    nc: NATS, stream: str, subjects: Sequence[str], timeout: float
) -> dict[str, bytes]:
    inbox = nc.new_inbox()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    found: dict[str, bytes] = {}

    async def on_message(msg: Any) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is not None:
            if not done.done():
                if status in ("204", "404"):  # end of batch; nothing matched
                    done.set_result(None)
                else:
                    done.set_exception(
                        LatticeError(f"batch get on {stream} failed: {status} {msg.data[:200]!r}")
                    )
            return
        subject = headers.get("Nats-Subject")
        if subject:
            found[subject] = msg.data

    sub = await nc.subscribe(inbox, cb=on_message, pending_msgs_limit=-1, pending_bytes_limit=-1)
    try:
        body = {"multi_last": list(subjects), "batch": len(subjects) + 1}
        subject = protocol.direct_get_subject(stream)
        await nc.publish(subject, json.dumps(body).encode(), reply=inbox)
        await asyncio.wait_for(done, timeout)
    except TimeoutError as exc:
        raise LatticeError(f"batch get on {stream} got no answer in {timeout:g} s") from exc
    finally:
        await sub.unsubscribe()
    return found
