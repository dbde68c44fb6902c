"""Pulling durable envelopes from the work stream, only while the node has room.

A node pulls from the shared consumer ``anywhere`` and from the consumer of each
needs class it meets. Each pull asks for a couple of envelopes (the credit) and
expires after a few seconds; a new pull goes out as soon as credit is used up,
or when capacity frees after a pull was held back for want of room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from superpose import protocol

log = logging.getLogger("superpose.node.durable")

PULL_EXPIRES_S = 5.0
PREFETCH_ENVELOPES = 2
NS = 1_000_000_000


class PullHost(Protocol):
    """What pulling needs of the node."""

    @property
    def nc(self) -> NATS: ...

    def has_room(self) -> bool: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


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


class WorkPuller:
    def __init__(self, host: PullHost, take: Callable[[Msg], None]) -> None:
        self.host = host
        self._take = take
        self._sources: dict[str, _Source] = {}
        self._wake = asyncio.Event()
        self._held_back = False
        """The last pull asked for less because the node's queue was full."""
        self._pulling = True

    def add_source(self, consumer: str) -> None:
        """Also pull from ``consumer`` (a needs class this node meets), from now on."""
        if consumer not in self._sources and self._pulling:
            self.host.spawn(self.add(consumer))

    async def add(self, consumer: str) -> None:
        if consumer in self._sources:
            return
        source = _Source(consumer, self.host.nc.new_inbox())
        self._sources[consumer] = source

        async def deliver(msg: Msg) -> None:
            await self._on_delivery(source, msg)

        source.subscription = await self.host.nc.subscribe(
            source.inbox, cb=deliver, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        log.info("pulling durable work from %s", consumer)
        self._wake.set()

    async def stop(self) -> None:
        self._pulling = False
        for source in list(self._sources.values()):
            if source.subscription is not None:
                await source.subscription.unsubscribe()
        self._sources.clear()

    def room(self) -> None:
        """A call finished: pull more if a pull was held back for want of room.
        (Not on every call: a wake-up of the pull loop per warm call cost the agent 8 %.)"""
        if self._held_back:
            self._wake.set()

    def wake(self) -> None:
        """Pull now: an envelope was settled or handed back."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            self._held_back = False
            for source in list(self._sources.values()):
                await self._pull(source)
            with contextlib.suppress(TimeoutError):  # wake on room, or as pulls expire
                await asyncio.wait_for(self._wake.wait(), PULL_EXPIRES_S / 5)

    def _wanted(self, source: _Source) -> int:
        """Envelopes to ask for now: only while the node has idle capacity."""
        now = time.monotonic()
        source.credits = [c for c in source.credits if c.expires > now and c.remaining > 0]
        outstanding = sum(c.remaining for c in source.credits)
        if not self.host.has_room():
            self._held_back = True
            return 0
        return max(0, PREFETCH_ENVELOPES - outstanding)

    async def _pull(self, source: _Source) -> None:
        wanted = self._wanted(source)
        if not wanted:
            return
        request = {"batch": wanted, "expires": int(PULL_EXPIRES_S * NS)}
        try:
            await self.host.nc.publish(
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
                self._wake.set()
            return
        if credit is not None:
            credit.remaining -= 1
        self._wake.set()  # the credit is used: ask for the next envelope while this one runs
        self._take(msg)
