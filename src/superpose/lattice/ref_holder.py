"""The objects one process holds for the Refs it put.

An ephemeral object lives in this process's memory, offered on its offers subject
(``lattice/offers.py``) for as long as a Ref to it is alive here, a pending call
carries it (the caller's future keeps those Refs alive), or the grace period after
the last of those ended (``$SUPERPOSE_REF_GRACE_S``, default 60 s: time for the
caller to read a Ref a function returned). Then it is withdrawn; a later read is an
``ObjectLostError``. Putting the same bytes again while they are held adds a Ref to
the same object.

A durable object goes to the ``sp_objects`` store under a hash of its digest, sealed
by it (``ref_sealing.py``), written once however many times, by whomever, it is put.

Each held object is recorded in the ``sp_refs`` memory bucket (digest, size, holder,
node) for ``superpose objects ls``, rewritten every third of its TTL, deleted when
freed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from superpose import config, protocol
from superpose.config import SPILL_THRESHOLD_BYTES
from superpose.errors import LatticeError
from superpose.lattice import ref_sealing
from superpose.lattice.offers import Offers
from superpose.lattice.ref_leases import renew_forever
from superpose.lattice.refs import Ref, serve_locally, stop_serving_locally

log = logging.getLogger("superpose.refs")

HOLD_FOREVER_S = 10 * 365 * 24 * 3600.0
"""An offer's own expiry: this holder withdraws it, not the offers' clock."""


@dataclass
class _Held:
    data: bytes
    payload: protocol.Payload
    record: bytes = b""
    """Its ``sp_refs`` record, rewritten as it is before the TTL drops it."""
    live: int = 0
    """Refs to it alive in this process (each made by a put, released by its finalizer)."""
    lease_until: float = 0.0
    """Kept at least until then (loop time): other processes hold Refs to it."""
    free_at: asyncio.TimerHandle | None = field(default=None, repr=False)


class RefHolder:
    """This process's objects: put here, read by anyone who has their Ref."""

    def __init__(
        self,
        nc: NATS,
        offered: Offers,
        holder_id: str,
        loop: asyncio.AbstractEventLoop,
        node: Callable[[], str],
    ) -> None:
        self._nc = nc
        self._offers = offered
        self.holder_id = holder_id
        self._loop = loop
        self._node = node
        """The node this process runs on, asked when needed ("" off the nodes): an
        executor's client starts before its node's runtime is installed."""
        self._held: dict[str, _Held] = {}
        self._records: KeyValue | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._forgetting: set[asyncio.Task[None]] = set()
        self._renewing: asyncio.Task[None] | None = None
        self.leases_heard = 0
        """Lease messages received (for tests and measurements)."""
        serve_locally(offered.subject, self.bytes_of)

    def bytes_of(self, digest: str) -> bytes | None:
        held = self._held.get(digest)
        return held.data if held is not None else None

    def __len__(self) -> int:
        return len(self._held)

    async def put(self, data: bytes, digest: str, *, durable: bool, producer: str = "") -> Ref:
        """A Ref to ``data`` (a serialized value) whose sha256 is ``digest`` (computed
        by the caller, off this loop: 50 MB take tens of milliseconds); on this
        process's loop. ``producer``: the invocation putting it, if any."""
        inline = data if len(data) <= SPILL_THRESHOLD_BYTES else None
        if durable:
            await self._store(digest, data)
            return Ref(digest, len(data), durable=True, data=inline)
        if inline is not None:
            return Ref(digest, len(data), data=inline)
        held = self._held.get(digest)
        if held is None:
            payload = self._offers.offer(data, protocol.CODEC_PICKLE, HOLD_FOREVER_S)
            held = self._held[digest] = _Held(data, payload)
            try:
                await self._record(digest, held)
            except BaseException:  # no Ref was made: nothing would ever free it
                self._drop(digest)
                raise
        return self._track(digest, held, producer)

    def _track(self, digest: str, held: _Held, producer: str) -> Ref:
        payload = held.payload
        ref = Ref(
            digest,
            len(held.data),
            holder=self.holder_id,
            source=payload.source,
            blob=payload.blob,
            node=self._node(),
            producer=producer,
            shm=payload.shm,
        )
        held.live += 1
        if held.free_at is not None:
            held.free_at.cancel()
            held.free_at = None
        finalizer = weakref.finalize(ref, self._dropped_from_any_thread, digest)
        finalizer.atexit = False  # at exit the whole holder goes: nothing to count
        return ref

    def _dropped_from_any_thread(self, digest: str) -> None:
        """A Ref was collected (in whatever thread the garbage collector ran)."""
        if self._loop.is_closed():
            return
        try:
            self._loop.call_soon_threadsafe(self._dropped, digest)
        except RuntimeError:  # the loop closed meanwhile: the process is ending
            return

    def _dropped(self, digest: str) -> None:
        held = self._held.get(digest)
        if held is None:
            return
        held.live -= 1
        if held.live <= 0 and held.free_at is None:
            grace_s = config.settings().ref_grace_s
            held.free_at = self._loop.call_later(grace_s, self._expire, digest)

    async def start(self) -> None:
        """Hear leases from readers, and renew this process's own on others' objects."""
        await self._nc.subscribe(protocol.ref_keep_subject(self.holder_id), cb=self._kept)
        self._renewing = self._loop.create_task(renew_forever(self._nc))

    async def _kept(self, msg: Msg) -> None:
        try:
            lease_s, digests = protocol.parse_ref_keep(msg.data)
        except protocol.ProtocolError:
            return
        self.keep(digests, lease_s)

    def keep(self, digests: list[str], lease_s: float) -> None:
        """Readers hold Refs to these: keep them ``lease_s`` more seconds at least."""
        until = self._loop.time() + lease_s
        for digest in digests:
            held = self._held.get(digest)
            if held is not None:
                held.lease_until = max(held.lease_until, until)
        self.leases_heard += 1

    def _expire(self, digest: str) -> None:
        """The grace period ended: withdrawn now, unless a put made a Ref to it again or
        a reader's lease runs longer (then it is looked at again when that ends)."""
        held = self._held.get(digest)
        if held is not None and held.lease_until > self._loop.time() and held.live <= 0:
            wait_s = held.lease_until - self._loop.time()
            held.free_at = self._loop.call_later(wait_s, self._expire, digest)
            return
        if held is not None and held.live <= 0 and self._drop(digest):
            task = self._loop.create_task(self._forget(digest))
            self._forgetting.add(task)
            task.add_done_callback(self._forgetting.discard)

    async def free(self, digest: str) -> None:
        """Withdraw an object now: its readers get ``ObjectLostError`` from here on."""
        if self._drop(digest):
            await self._forget(digest)

    def _drop(self, digest: str) -> bool:
        held = self._held.pop(digest, None)
        if held is None:
            return False
        if held.free_at is not None:
            held.free_at.cancel()
        self._offers.withdraw(held.payload)
        return True

    async def _forget(self, digest: str) -> None:
        """Its record goes from ``sp_refs`` (unless it was put again meanwhile)."""
        records = await self._bucket()
        if digest in self._held:
            return
        try:
            await records.delete(protocol.ref_record_key(digest, self.holder_id))
        except Exception as exc:  # the record's TTL removes it anyway
            log.warning("could not delete the record of object %s: %s", digest[:12], exc)

    async def close(self) -> None:
        """Free everything (the client closes): readers get ``ObjectLostError``."""
        for task in (self._refresh, self._renewing):
            if task is not None:
                task.cancel()
        if self._forgetting:
            await asyncio.wait(self._forgetting)
        stop_serving_locally(self._offers.subject)
        for digest in list(self._held):
            await self.free(digest)

    async def _store(self, digest: str, data: bytes) -> None:
        """Write a durable object once: a digest already stored is the same bytes."""
        await ref_sealing.store(self._nc, protocol.OBJECTS_BUCKET, digest, data)

    async def _record(self, digest: str, held: _Held) -> None:
        records = await self._bucket()
        record = {
            "digest": digest,
            "size": len(held.data),
            "holder": self.holder_id,
            "node": self._node(),
            "created": time.time(),
        }
        held.record = json.dumps(record).encode()
        await records.put(protocol.ref_record_key(digest, self.holder_id), held.record)
        if self._refresh is None:
            self._refresh = self._loop.create_task(self._keep_records())

    async def _keep_records(self) -> None:
        """Rewrite the records of what is still held before their TTL drops them."""
        while True:
            await asyncio.sleep(protocol.REF_RECORD_TTL_S / 3)
            records = await self._bucket()
            for digest, held in list(self._held.items()):
                key = protocol.ref_record_key(digest, self.holder_id)
                try:
                    await records.put(key, held.record)
                except Exception as exc:
                    log.warning("could not refresh the record of object %s: %s", digest[:12], exc)

    async def _bucket(self) -> KeyValue:
        if self._records is None:
            try:
                self._records = await self._nc.jetstream().key_value(protocol.REFS_BUCKET)
            except Exception as exc:
                raise LatticeError(
                    f"the lattice has no {protocol.REFS_BUCKET} bucket ({exc}): its nodes "
                    "predate object references; restart them with this version"
                ) from exc
        return self._records
