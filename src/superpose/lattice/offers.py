"""Big arguments and results of direct calls, pulled in chunks from their owner.

A direct call's payload needs no durability: its caller waits for it, and a
retry resends it from the caller's memory. So instead of writing it to the
object store (fsync'd file storage, then read back: 0.5-0.8 s for 50 MB here),
the process that has the bytes *offers* them and the process that needs them
*pulls* them with core NATS requests, many chunks in flight (about 0.12 s for
50 MB on this machine). Every process that offers answers on its own subject
(``_SP.<client id>.b``), so an offer works across hosts like any call.

A reader on the holder's host skips the broker: the holder also writes the
bytes once to shared memory (``lattice/shm.py``) and the payload names the file;
the reader maps it, and pulls over NATS only when that fails (another host, a
sandbox without ``/dev/shm``, an offer gone).

Lifetimes: the caller withdraws an argument when its call settles; a result is
released by its reader once read, and both expire as a backstop (a reader
that died, a call abandoned mid-way).
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import threading
import time
import uuid
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from superpose import protocol
from superpose.errors import SuperposeError
from superpose.lattice import oob, shm
from superpose.lattice.objects import chunk_size_for
from superpose.support.retry import Backoff, retry

CHUNKS_IN_FLIGHT = 16
"""Requests outstanding per pull: 16-32 measured best for 1 MiB chunks (50 MB in 0.12 s)."""
CHUNK_TIMEOUT_S = 10.0
CHUNK_ATTEMPTS = 3
CHUNK_RETRY = Backoff(0)
"""A chunk that timed out is asked for again at once: the wait was the pause."""
RESULT_HOLD_S = 120.0
"""How long a result waits for its reader before it is dropped."""

log = logging.getLogger("superpose.lattice")


class OfferGoneError(SuperposeError):
    """The bytes a payload refers to can no longer be pulled: their owner stopped, or
    dropped them."""


@dataclass(slots=True)
class _Offer:
    data: oob.Encoded
    expires: float
    shm: str | None = None


class Offers:
    """The payloads this process offers, served on ``protocol.offers_subject(owner)``."""

    def __init__(self, nc: NATS, owner: str, shelf: shm.Shelf | None = None) -> None:
        self._nc = nc
        self.subject = protocol.offers_subject(owner)
        self._offers: dict[str, _Offer] = {}
        self._lock = threading.Lock()  # a lane thread offers results while the loop serves
        self.shelf = shm.Shelf() if shelf is None else shelf

    def offer(self, data: oob.Encoded, codec: str, hold_s: float) -> protocol.Payload:
        """Offer ``data`` for ``hold_s`` seconds at most; returns the payload naming it
        (and its shared-memory file, for a reader on this host)."""
        blob = uuid.uuid4().hex
        now = time.monotonic()
        name = self.shelf.put(data)
        with self._lock:
            expired = [k for k, o in self._offers.items() if o.expires <= now]
            gone = [self._offers.pop(key) for key in expired]
            self._offers[blob] = _Offer(data, now + hold_s, name)
        for old in gone:  # a reader may still be at it: never reused
            self.shelf.remove(old.shm)
        return protocol.Payload(
            codec=codec, blob=blob, size=len(data), source=self.subject, shm=name
        )

    def withdraw(self, payload: protocol.Payload | None, read: bool = False) -> None:
        """The offer ends. ``read``: every reader is known to be done with it (its call
        was answered, once), so its shared-memory file may be written again."""
        if payload is not None and payload.source == self.subject and payload.blob:
            self._drop(payload.blob, read)

    def _drop(self, blob: str, read: bool) -> None:
        with self._lock:
            offer = self._offers.pop(blob, None)
        if offer is not None:
            self.shelf.remove(offer.shm, reuse=read)

    def close(self) -> None:
        """Unlink every file still offered (the process is stopping)."""
        with self._lock:
            offers, self._offers = list(self._offers.values()), {}
        for offer in offers:
            self.shelf.remove(offer.shm)
        self.shelf.close()

    def __len__(self) -> int:
        return len(self._offers)

    async def serve(self, msg: Msg) -> None:
        """A pull is answered with those bytes; a release drops the offer."""
        try:
            request = protocol.decode_offer_request(msg.data)
        except protocol.ProtocolError:
            return  # not a request of ours: nothing to answer
        if isinstance(request, protocol.OfferRelease):  # sent once decoded
            self._drop(request.blob, read=True)
            return
        if not msg.reply:
            return
        offer = self._offers.get(request.blob)
        if offer is None:
            await self._nc.publish(msg.reply, b"", headers={protocol.OFFER_GONE_HEADER: "1"})
            return
        # A view: nats-py copies it into the outgoing command anyway. A frame's parts
        # are joined for the first chunk pulled (its reader could not map the file).
        start = request.offset
        chunk = memoryview(oob.as_bytes(offer.data))[start : start + request.length]
        await self._nc.publish(msg.reply, chunk)  # type: ignore[arg-type]


async def pull(nc: NATS, payload: protocol.Payload) -> protocol.Buffer:
    """The bytes an offered payload names: mapped from shared memory on the holder's
    host, else fetched over NATS in chunks with many in flight."""
    assert payload.source is not None and payload.blob is not None
    size = payload.size
    if size == 0:
        return b""
    if payload.shm is not None:
        try:
            return mapped(payload, shm.read(payload.shm, size))
        except shm.ShmRefusedError as exc:
            log.debug("pulling over NATS: %s", exc)
    return await pull_over_nats(nc, payload)


def mapped(payload: protocol.Payload, mapping: mmap.mmap) -> protocol.Buffer:
    """A pickle is decoded straight from the mapping (one copy, not two: 35-40 ms for
    50 MB against 75-80 ms read into a buffer first); JSON and HTTP bodies, whose
    readers want bytes, are copied out and the mapping closed."""
    if payload.codec == protocol.CODEC_PICKLE:
        return memoryview(mapping)  # holds the mapping: unmapped when the view is dropped
    with mapping:
        return mapping[:]


async def pull_over_nats(nc: NATS, payload: protocol.Payload) -> bytes | bytearray:
    """The bytes an offered payload names, fetched in chunks with many in flight."""
    assert payload.source is not None and payload.blob is not None
    size = payload.size
    if size == 0:
        return b""
    chunk = chunk_size_for(nc)
    buffer = bytearray(size)
    window = asyncio.Semaphore(CHUNKS_IN_FLIGHT)

    async def fetch(offset: int) -> None:
        length = min(chunk, size - offset)
        async with window:
            data = await _request_chunk(nc, payload, offset, length)
        if len(data) != length:
            raise OfferGoneError(
                f"payload {payload.blob} answered {len(data)} bytes at offset {offset}, "
                f"expected {length}"
            )
        buffer[offset : offset + length] = data

    tasks = [asyncio.ensure_future(fetch(offset)) for offset in range(0, size, chunk)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    # Not bytes(buffer): a second 50 MB copy measured 25 ms, and every reader
    # (pickle, json, msgpack) takes the bytearray as it is.
    return buffer


async def _request_chunk(nc: NATS, payload: protocol.Payload, offset: int, length: int) -> bytes:
    assert payload.source is not None and payload.blob is not None
    source, request = payload.source, protocol.OfferPull(payload.blob, offset, length).encode()

    async def ask() -> Msg:
        try:
            return await nc.request(source, request, timeout=CHUNK_TIMEOUT_S)
        except NoRespondersError as exc:
            raise OfferGoneError(
                f"the process that held payload {payload.blob} ({payload.size} bytes) is gone"
            ) from exc

    try:
        msg = await retry(
            ask, backoff=CHUNK_RETRY, attempts=CHUNK_ATTEMPTS, retry_on=NatsTimeoutError
        )
    except NatsTimeoutError as exc:
        raise OfferGoneError(
            f"payload {payload.blob}: no answer for the chunk at offset {offset} "
            f"after {CHUNK_ATTEMPTS} tries of {CHUNK_TIMEOUT_S:.0f} s"
        ) from exc
    if msg.headers and msg.headers.get(protocol.OFFER_GONE_HEADER):
        raise OfferGoneError(
            f"payload {payload.blob} ({payload.size} bytes) is no longer offered by its "
            "owner (released, expired, or its call already ended)"
        )
    return msg.data


async def release(nc: NATS, payload: protocol.Payload) -> None:
    """Tell the owner its offer was read (best effort: it also expires)."""
    if payload.source is not None and payload.blob is not None:
        try:
            await nc.publish(payload.source, protocol.OfferRelease(payload.blob).encode())
        except Exception:  # the owner expires it anyway
            return
