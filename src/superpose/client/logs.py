"""Reading function output back from the lattice's log stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from superpose import protocol
from superpose.client.client import Client

FETCH_BATCH = 256
FOLLOW_POLL_S = 1.0


async def read(
    client: Client, app: str, fn: str | None = None, *, follow: bool = False
) -> AsyncIterator[protocol.LogRecord]:
    """Every stored line of ``app`` (or ``app.fn``), then new ones while ``follow``."""
    sub = await client.assets.js.pull_subscribe(
        protocol.log_filter(app, fn),
        durable=None,
        stream=protocol.LOGS_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=60.0
        ),
    )
    try:
        backlog = (await sub.consumer_info()).num_pending or 0
        while backlog > 0 or follow:
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=FOLLOW_POLL_S)
            except nats.errors.TimeoutError:
                if not follow:
                    return
                continue
            for msg in msgs:
                backlog -= 1
                yield protocol.LogRecord.decode(msg.data)
    finally:
        await sub.unsubscribe()
