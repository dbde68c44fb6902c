"""Reading every message on one subject of a stream through a consumer whose filter is
in its create request's subject, so a narrow user's permissions can pin what it reads.

An object's chunks share one subject (``$O.<bucket>.C.<nuid>``), so no direct get by
subject reaches any but the last. nats-py's ordered consumer would read them, but it
is created unnamed (``CONSUMER.CREATE.<stream>``, no subject in sight), which a
permission cannot narrow: granting it lets a user read every object in the bucket.
This is the same push consumer, delivered to the reader's own inbox with flow
control, created with ``CONSUMER.CREATE.<stream>.<name>.<filter>``; it removes itself
(``inactive_threshold``) once its reader has stopped listening. As an ordered
consumer does, it starts again after the last message it kept when a delivery is
skipped or nothing (not even a heartbeat) arrives for a while: the server holding it
may have gone, or a slow reader may have been cut off.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from superpose import protocol
from superpose.errors import SuperposeError
from superpose.lattice.batch import js_api

HEARTBEAT_S = 2.0
"""Idle heartbeats (required with flow control); a stalled consumer asks in one."""
STALL_S = 3 * HEARTBEAT_S
"""Nothing for this long, heartbeats included: the consumer is gone; make another."""
INACTIVE_S = 5.0
"""How long the consumer outlives its reader's interest before the server drops it."""
STATUS_CONTROL = "100"
"""Flow-control requests and idle heartbeats carry this status and no data."""
RETRY_S = 0.5
"""The pause before asking again for a consumer when no server answered."""
NS = 1_000_000_000


class _Reading:
    """One read: the messages kept so far, and the consumer delivering the rest."""

    def __init__(self, nc: NATS, stream: str, subject: str, count: int) -> None:
        self.nc, self.stream, self.subject, self.count = nc, stream, subject, count
        self.parts: list[bytes] = []
        self.next_stream_seq = 0
        """The stream sequence after the last kept message (0: from the start)."""
        self.expected = 1
        """The consumer sequence the next delivery must carry."""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.restart = asyncio.Event()
        self.heard = asyncio.Event()

    async def on_message(self, msg: Msg) -> None:
        self.heard.set()
        status = (msg.headers or {}).get("Status")
        if status == STATUS_CONTROL:
            await _answer_control(self.nc, msg)
            return
        if status:  # e.g. 409, the consumer was deleted: make another
            self.restart.set()
            return
        sequence = msg.metadata.sequence
        if sequence.consumer != self.expected:  # a delivery was lost: start again
            self.restart.set()
            return
        self.expected += 1
        self.next_stream_seq = sequence.stream + 1
        self.parts.append(msg.data)
        if len(self.parts) >= self.count and not self.done.done():
            self.done.set_result(None)

    async def consume(self) -> None:
        """Deliveries from a new consumer until all have come or it must be replaced."""
        self.expected, self.restart = 1, asyncio.Event()
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(
            inbox, cb=self.on_message, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        try:
            await _create(self.nc, self.stream, self.subject, inbox, self.next_stream_seq)
            while not self.done.done() and not self.restart.is_set():
                self.heard.clear()
                events = [asyncio.ensure_future(e.wait()) for e in (self.heard, self.restart)]
                waits: list[asyncio.Future[Any]] = [self.done, *events]
                finished, _ = await asyncio.wait(
                    waits, timeout=STALL_S, return_when=asyncio.FIRST_COMPLETED
                )
                for event in events:
                    event.cancel()
                if not finished:
                    return  # stalled: the caller makes another consumer
        finally:
            await sub.unsubscribe()


async def read(nc: NATS, stream: str, subject: str, count: int, timeout_s: float) -> list[bytes]:
    """The first ``count`` messages on ``subject`` in ``stream``, in stream order."""
    reading = _Reading(nc, stream, subject, count)

    async def until_done() -> None:
        while not reading.done.done():
            try:
                await reading.consume()
            except nats.errors.Error:  # no server answered: it may be failing over
                await asyncio.sleep(RETRY_S)

    try:
        await asyncio.wait_for(until_done(), timeout_s)
    except TimeoutError as exc:
        raise SuperposeError(
            f"{len(reading.parts)} of {count} messages on {subject} arrived in {timeout_s:g} s"
        ) from exc
    return reading.parts[:count]


async def _answer_control(nc: NATS, msg: Msg) -> None:
    """A flow-control request is answered on its reply subject; a heartbeat of a stalled
    consumer names the subject that resumes it."""
    stalled = (msg.headers or {}).get("Nats-Consumer-Stalled")
    for subject in (msg.reply, stalled):
        if subject:
            await nc.publish(subject, b"")


async def _create(nc: NATS, stream: str, subject: str, inbox: str, start_seq: int) -> None:
    name = uuid.uuid4().hex
    config: dict[str, Any] = {
        "name": name,
        "deliver_subject": inbox,
        "filter_subject": subject,
        "deliver_policy": "all",
        "ack_policy": "none",
        "replay_policy": "instant",
        "flow_control": True,
        "idle_heartbeat": int(HEARTBEAT_S * NS),
        "inactive_threshold": int(INACTIVE_S * NS),
        "mem_storage": True,
        "num_replicas": 1,
    }
    if start_seq:
        config |= {"deliver_policy": "by_start_sequence", "opt_start_seq": start_seq}
    body = {"stream_name": stream, "config": config, "action": "create"}
    await js_api(nc, protocol.filtered_consumer_subject(stream, name, subject), body)
