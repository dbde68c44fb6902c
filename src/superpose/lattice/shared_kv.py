"""The shared dicts' key-value reads and writes, made by hand on their streams.

nats-py's ``KeyValue`` cannot set a per-message TTL (``Nats-TTL``), nor create a
watch whose filter is in its request subject (which is what lets a role pin a reader
to an app's keys), so these are plain JetStream requests with documented headers. The
layout is nats-py's and the CLI's (``$KV.<bucket>.<key>``, ``KV-Operation`` markers),
so ``nats kv`` reads the buckets too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from superpose import protocol
from superpose.errors import LatticeError
from superpose.lattice.batch import js_api
from superpose.lattice.fast_requests import requests_for

TIMEOUT_S = 5.0
NO_ANSWER = (
    "no answer in {timeout:g} s (a user whose role may not use this app's dicts and "
    "queues, creds made with another --app, is not answered)"
)
WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a compare-and-set that lost."""
DELETE_MARKER_TTL_S = 60
"""A deleted key's marker lives this long (watchers see it, a racing compare-and-set
fails on it), then the server drops it: a deleted key costs no memory for good."""
WATCH_IDLE_S = 10.0
"""A watch's consumer outlives its reader by this much (then the server removes it)."""

SET, DELETE, EXPIRED = "set", "delete", "expired"


class Conflict(LatticeError):
    """A compare-and-set write found another revision than the one it expected."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A key's last message: its value (None once deleted or expired), the revision a
    compare-and-set names, and what happened (``set``, ``delete``, ``expired``)."""

    key: str
    value: bytes | None
    revision: int
    op: str


def _entry(key: str, msg: Msg, revision: int) -> Entry:
    headers = msg.headers or {}
    if headers.get(protocol.MARKER_REASON_HEADER):
        return Entry(key, None, revision, EXPIRED)
    if headers.get(protocol.KV_OPERATION_HEADER) in ("DEL", "PURGE"):
        return Entry(key, None, revision, DELETE)
    return Entry(key, msg.data, revision, SET)


async def get(nc: NATS, bucket: str, key: str) -> Entry:
    """The key's entry; revision 0 when it never was (or its marker is gone too)."""
    stream = protocol.kv_stream(bucket)
    request = protocol.direct_get_last_subject(stream, protocol.kv_subject(bucket, key))
    try:
        msg = await requests_for(nc).request(request, b"", None, TIMEOUT_S)
    except nats.errors.TimeoutError as exc:
        raise LatticeError(f"reading {key!r}: " + NO_ANSWER.format(timeout=TIMEOUT_S)) from exc
    headers = msg.headers or {}
    status = headers.get("Status")
    if status == "404":
        return Entry(key, None, 0, DELETE)
    if status:
        raise LatticeError(f"reading {key!r} from {bucket} failed: {status} {msg.data[:200]!r}")
    return _entry(key, msg, int(headers.get(protocol.SEQUENCE_HEADER, "0")))


def _headers(ttl_s: float | None, last: int | None) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    if ttl_s is not None:
        headers[protocol.MSG_TTL_HEADER] = f"{ttl_s:g}s"
    if last is not None:
        headers[protocol.EXPECTED_LAST_SUBJECT_SEQ_HEADER] = str(last)
    return headers or None


async def publish(
    nc: NATS, subject: str, data: bytes, headers: dict[str, str] | None, what: str
) -> int:
    """One acknowledged JetStream write; its sequence. A lost compare-and-set raises
    ``Conflict``, any other refusal ``LatticeError`` naming ``what``."""
    try:
        reply = await requests_for(nc).request(subject, data, headers, TIMEOUT_S)
    except nats.errors.NoRespondersError as exc:
        raise LatticeError(f"{what}: no stream takes {subject} (is the lattice older?)") from exc
    except nats.errors.TimeoutError as exc:
        raise LatticeError(f"{what}: " + NO_ANSWER.format(timeout=TIMEOUT_S)) from exc
    answer = json.loads(reply.data or b"{}")
    error = answer.get("error")
    if error:
        if error.get("err_code") == WRONG_LAST_SEQUENCE:
            raise Conflict(f"{what}: {error.get('description')}")
        raise LatticeError(f"{what}: {error.get('description', error)}")
    return int(answer["seq"])


async def put(
    nc: NATS,
    bucket: str,
    key: str,
    data: bytes,
    *,
    ttl_s: float | None = None,
    last: int | None = None,
) -> int:
    """Write ``key``; only if its revision is still ``last`` when given (0: absent)."""
    subject = protocol.kv_subject(bucket, key)
    return await publish(nc, subject, data, _headers(ttl_s, last), f"writing {key!r}")


async def delete(nc: NATS, bucket: str, key: str, *, last: int | None = None) -> int:
    """Leave a delete marker on ``key`` (gone after DELETE_MARKER_TTL_S)."""
    headers = _headers(DELETE_MARKER_TTL_S, last) or {}
    headers[protocol.KV_OPERATION_HEADER] = "DEL"
    return await publish(nc, protocol.kv_subject(bucket, key), b"", headers, f"deleting {key!r}")


async def _consumer(
    nc: NATS, bucket: str, filter_key: str, inbox: str, config: dict[str, Any]
) -> int:
    """A push consumer on the keys under ``filter_key`` delivering to ``inbox``; the
    number of messages it has pending at once."""
    stream = protocol.kv_stream(bucket)
    name = uuid.uuid4().hex
    filter_subject = protocol.kv_subject(bucket, filter_key)
    subject = protocol.filtered_consumer_subject(stream, name, filter_subject)
    body = {
        "stream_name": stream,
        "config": {
            "name": name,
            "deliver_subject": inbox,
            "filter_subject": filter_subject,
            "ack_policy": "none",
            "mem_storage": True,
            "num_replicas": 1,
            "inactive_threshold": int(WATCH_IDLE_S * 1_000_000_000),
            **config,
        },
    }
    answer = await js_api(nc, subject, body, timeout=TIMEOUT_S)
    return int(answer.get("num_pending", 0))


async def keys(nc: NATS, bucket: str, filter_key: str) -> list[str]:
    """The live keys under ``filter_key`` (a pattern ending in ``>``): the last message
    of each subject, headers only, skipping delete and expiry markers. A write that
    comes while they are read counts as well (its key's newest message decides)."""
    live: dict[str, bool] = {}
    inbox = nc.new_inbox()
    done = asyncio.Event()
    expected: list[int] = []
    seen = 0

    async def on_message(msg: Msg) -> None:
        nonlocal seen
        seen += 1
        headers = msg.headers or {}
        marker = headers.get(protocol.MARKER_REASON_HEADER) or headers.get(
            protocol.KV_OPERATION_HEADER
        ) in ("DEL", "PURGE")
        live[protocol.kv_key(bucket, msg.subject)] = not marker
        if expected and seen >= expected[0]:
            done.set()

    sub = await nc.subscribe(inbox, cb=on_message)
    try:
        config = {"deliver_policy": "last_per_subject", "headers_only": True}
        pending = await _consumer(nc, bucket, filter_key, inbox, config)
        expected.append(pending)
        if pending and seen < pending:
            await asyncio.wait_for(done.wait(), TIMEOUT_S)
        return [key for key, is_live in live.items() if is_live]
    except TimeoutError as exc:
        raise LatticeError(f"listing the keys of {bucket} took over {TIMEOUT_S:g} s") from exc
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def watch(
    nc: NATS, bucket: str, filter_key: str, on_entry: Callable[[Entry], None]
) -> Subscription:
    """Every change to the keys under ``filter_key`` from now on, to ``on_entry`` (on
    the connection's loop); unsubscribe the answer to stop."""

    async def on_message(msg: Msg) -> None:
        revision = msg.metadata.sequence.stream if msg.reply else 0
        on_entry(_entry(protocol.kv_key(bucket, msg.subject), msg, revision))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_message, pending_msgs_limit=-1, pending_bytes_limit=-1)
    try:
        await _consumer(nc, bucket, filter_key, inbox, {"deliver_policy": "new"})
    except BaseException:
        await sub.unsubscribe()
        raise
    return sub
