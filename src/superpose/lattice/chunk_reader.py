"""Reading every message on one subject of a stream through a consumer whose filter is
in its create request's subject, so a narrow user's permissions can pin what it reads.

An object's chunks share one subject (``$O.<bucket>.C.<nuid>``), so no direct get by
subject reaches any but the last. nats-py's ordered consumer would read them, but it
is created unnamed (``CONSUMER.CREATE.<stream>``, no subject in sight), which a
permission cannot narrow: granting it lets a user read every object in the bucket.
This is the same push consumer, delivered to the reader's own inbox with flow
control, created with ``CONSUMER.CREATE.<stream>.<name>.<filter>``; it removes itself
(``inactive_threshold``) once its reader has stopped listening.
"""

from __future__ import annotations

import asyncio
import uuid

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from superpose import protocol
from superpose.errors import SuperposeError
from superpose.lattice.batch import js_api

HEARTBEAT_NS = 5_000_000_000
"""Idle heartbeats (required with flow control); a stalled consumer asks in one."""
INACTIVE_NS = 5_000_000_000
"""How long the consumer outlives its reader's interest before the server drops it."""
STATUS_CONTROL = "100"
"""Flow-control requests and idle heartbeats carry this status and no data."""


async def read(nc: NATS, stream: str, subject: str, count: int, timeout_s: float) -> list[bytes]:
    """The first ``count`` messages on ``subject`` in ``stream``, in stream order."""
    parts: list[bytes] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_message(msg: Msg) -> None:
        headers = msg.headers or {}
        if headers.get("Status") == STATUS_CONTROL:
            await _answer_control(nc, msg)
            return
        parts.append(msg.data)
        if len(parts) >= count and not done.done():
            done.set_result(None)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_message, pending_msgs_limit=-1, pending_bytes_limit=-1)
    try:
        await _create(nc, stream, subject, inbox)
        await asyncio.wait_for(done, timeout_s)
    except TimeoutError as exc:
        raise SuperposeError(
            f"{len(parts)} of {count} messages on {subject} arrived in {timeout_s:g} s"
        ) from exc
    finally:
        await sub.unsubscribe()
    return parts[:count]


async def _answer_control(nc: NATS, msg: Msg) -> None:
    """A flow-control request is answered on its reply subject; a heartbeat of a stalled
    consumer names the subject that resumes it."""
    stalled = (msg.headers or {}).get("Nats-Consumer-Stalled")
    for subject in (msg.reply, stalled):
        if subject:
            await nc.publish(subject, b"")


async def _create(nc: NATS, stream: str, subject: str, inbox: str) -> None:
    name = uuid.uuid4().hex
    config = {
        "name": name,
        "deliver_subject": inbox,
        "filter_subject": subject,
        "deliver_policy": "all",
        "ack_policy": "none",
        "replay_policy": "instant",
        "flow_control": True,
        "idle_heartbeat": HEARTBEAT_NS,
        "inactive_threshold": INACTIVE_NS,
        "mem_storage": True,
        "num_replicas": 1,
    }
    body = {"stream_name": stream, "config": config, "action": "create"}
    await js_api(nc, protocol.filtered_consumer_subject(stream, name, subject), body)
