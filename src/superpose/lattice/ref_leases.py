"""Leases: a process holding Refs to another process's objects keeps them alive.

Every process with a client sends, every third of its grace period, one message to
each holder whose objects it holds Refs to (``protocol.ref_keep_subject``): the
digests, and for how long to keep them (its grace period). A holder keeps an object
at least that long past each message (``RefHolder.keep``), so a Ref returned by a
function stays readable as long as its caller holds it, and its holder lives; once
no reader renews, the object goes when the last lease ends.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS

from superpose import config, protocol
from superpose.lattice.refs import held_elsewhere

log = logging.getLogger("superpose.refs")

DIGESTS_PER_MESSAGE = 8000
"""65 bytes each: a message stays well under NATS's 1 MiB default payload."""
MIN_LEASE_S = 0.3
"""The shortest lease sent, whatever the grace period (0 would renew without pause)."""


async def renew_forever(nc: NATS) -> None:
    """Renew the leases on what this process holds Refs to, until cancelled."""
    while True:
        lease_s = max(MIN_LEASE_S, config.settings().ref_grace_s)
        await renew(nc, lease_s)
        await asyncio.sleep(lease_s / 3)


async def renew(nc: NATS, lease_s: float) -> None:
    for holder, digests in held_elsewhere().items():
        ordered = sorted(digests)
        for start in range(0, len(ordered), DIGESTS_PER_MESSAGE):
            message = protocol.ref_keep_message(
                lease_s, ordered[start : start + DIGESTS_PER_MESSAGE]
            )
            try:
                await nc.publish(protocol.ref_keep_subject(holder), message)
            except Exception as exc:  # the connection is down: the next round tries again
                log.debug("could not renew leases at %s: %s", holder, exc)
