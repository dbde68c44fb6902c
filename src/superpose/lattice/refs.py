"""Object references: a value named by the sha256 of its serialized bytes.

A ``Ref`` carries an address, never the value (unless the value is small): its digest,
its size, and where its bytes are. Small values (at most ``SPILL_THRESHOLD_BYTES``)
travel inline; an ephemeral big one stays in the memory of the process that put it
and is pulled from that process's offers subject (``lattice/offers.py``); a durable
one is in the ``sp_objects`` Object Store under its digest. So a Ref passed from a
caller to a function, or returned from one, moves a few hundred bytes, and the value
goes from its holder straight to the process that reads it.

Pickling a Ref is how it travels (a call's arguments, a result). Two hooks watch
that, both context-scoped and free when unused: ``sending()`` collects the Refs a
pickling sends (the caller keeps them alive while the call is pending), and
``arriving()`` collects the Refs an unpickling made (a node swaps them for their
values before the function runs, without walking arguments that hold none).
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
import weakref
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.errors import NotFoundError, ObjectLostError
from superpose.lattice import objects, offers, ref_sealing
from superpose.support.collecting import collecting

_sending: contextvars.ContextVar[list[Ref] | None] = contextvars.ContextVar(
    "superpose_refs_sending", default=None
)
_arriving: contextvars.ContextVar[list[Ref] | None] = contextvars.ContextVar(
    "superpose_refs_arriving", default=None
)
LocalBytes = Callable[[str], bytes | None]
"""A holder in this process: a digest → its bytes, or None if it holds no such object."""
Recover = Callable[[NATS, "Ref", ObjectLostError], Awaitable[bytes | bytearray]]
"""What a reader does with an ephemeral object found lost: make it again from its
lineage, or raise (``lattice/lineage.py``, installed by the client)."""
_recover: list[Recover] = []
_local: dict[str, LocalBytes] = {}
"""Offers subject → the holder of this process answering on it (a read of one's own
object skips the lattice)."""


class Ref:
    """A value on the lattice, by content: ``sp.put(value)`` makes one, ``sp.get(ref)``
    reads it, and a function given one as an argument (at any depth in lists, tuples
    and dicts) receives the value.

    Two Refs are equal when they name the same bytes (the same digest).
    """

    __slots__ = (
        "__weakref__",
        "blob",
        "data",
        "digest",
        "durable",
        "holder",
        "node",
        "producer",
        "shm",
        "size",
        "source",
    )

    def __init__(
        self,
        digest: str,
        size: int,
        *,
        durable: bool = False,
        holder: str = "",
        source: str | None = None,
        blob: str | None = None,
        data: bytes | None = None,
        node: str = "",
        producer: str = "",
        shm: str | None = None,
    ) -> None:
        self.digest = digest
        """sha256 of the serialized value, in hex."""
        self.size = size
        """Bytes of the serialized value."""
        self.durable = durable
        """In the ``sp_objects`` store: outlives every process."""
        self.holder = holder
        """The client id of the process holding an ephemeral object ("" when none is needed)."""
        self.source = source
        """The subject its holder serves pulls on (``_SP.<holder>.b``)."""
        self.blob = blob
        """The offer id at the holder: random, so knowing the digest is not enough to pull."""
        self.data = data
        """The bytes themselves, for a small value."""
        self.node = node
        """The node whose executor holds it ("" when the holder is not on a node)."""
        self.producer = producer
        """The invocation whose function put it ("" outside one): where lineage starts,
        to make a lost object again."""
        self.shm = shm
        """The holder's shared-memory file of it (``lattice/shm.py``): a reader on the
        holder's host maps it instead of pulling the bytes through the broker."""

    def __reduce__(self) -> tuple[Any, ...]:
        sent = _sending.get()
        if sent is not None:
            sent.append(self)
        fields = (self.digest, self.size, self.durable, self.holder, self.source, self.blob)
        return (_arrive, (*fields, self.data, self.node, self.producer, self.shm))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        if self.durable:
            where = "durable"
        elif self.data is not None:
            where = "inline"
        else:
            where = f"held by {self.holder}"
        return f"Ref({self.digest[:12]}, {self.size} bytes, {where})"

    def name(self) -> str:
        """How messages name it: its digest's first 12 digits, size and holder."""
        held = f", held by {self.holder}" if self.holder else ""
        held += f" on node {self.node}" if self.node else ""
        held += f", made by invocation {self.producer}" if self.producer else ""
        kind = "durable" if self.durable else "ephemeral"
        return f"object {self.digest[:12]} ({self.size} bytes, {kind}{held})"


def _arrive(
    digest: str,
    size: int,
    durable: bool,
    holder: str,
    source: str | None,
    blob: str | None,
    data: bytes | None,
    node: str = "",
    producer: str = "",
    shm: str | None = None,
) -> Ref:
    """A Ref unpickled: noted for ``arriving()``, when someone is collecting."""
    ref = Ref(digest, size, durable=durable, holder=holder, source=source, blob=blob, data=data)
    ref.node, ref.producer, ref.shm = node, producer, shm
    found = _arriving.get()
    if found is not None:
        found.append(ref)
    if holder and source is not None and source not in _local:
        with _remote_lock:  # unpickling happens in any thread
            _remote.setdefault(holder, weakref.WeakSet()).add(ref)
    return ref


_remote: dict[str, weakref.WeakSet[Ref]] = {}
"""Holder client id → the Refs to its objects alive in this process (not made here):
what leases keep alive (``ref_leases.py``)."""
_remote_lock = threading.Lock()


def held_elsewhere() -> dict[str, set[str]]:
    """Holder client id → digests of its objects this process holds Refs to now."""
    with _remote_lock:
        for holder in [h for h, refs in _remote.items() if not refs]:
            del _remote[holder]
        return {holder: {ref.digest for ref in refs} for holder, refs in _remote.items()}


def sending() -> AbstractContextManager[list[Ref]]:
    """The Refs pickled inside this block (a call's arguments being encoded)."""
    return collecting(_sending)


def arriving() -> AbstractContextManager[list[Ref]]:
    """The Refs unpickled inside this block (a call's arguments being decoded)."""
    return collecting(_arriving)


def digest_of(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def serve_locally(source: str, lookup: LocalBytes) -> None:
    """Reads of objects offered on ``source`` are answered from ``lookup`` in this process."""
    _local[source] = lookup


def stop_serving_locally(source: str) -> None:
    _local.pop(source, None)


def recover_with(recover: Recover) -> None:
    """Lost ephemeral objects are handed to ``recover`` (the last one given wins)."""
    _recover[:] = [recover]


async def fetch(nc: NATS, ref: Ref) -> bytes | bytearray:
    """The bytes ``ref`` names, from wherever they are. An ephemeral object whose holder
    is gone is made again from its lineage when its producer may run twice; otherwise
    ``ObjectLostError`` names the object, its holder and node, and its producer."""
    try:
        return await fetch_held(nc, ref)
    except ObjectLostError as lost:
        if ref.durable or ref.blob is None or not _recover:
            raise
        return await _recover[0](nc, ref, lost)


async def fetch_held(nc: NATS, ref: Ref) -> bytes | bytearray:
    """The bytes ``ref`` names, from where it says they are; ``ObjectLostError`` naming
    the object (and its holder) when they are gone. Never waits on a holder that is
    gone: NATS answers "no responders" at once."""
    if ref.data is not None:
        return ref.data
    if ref.durable:
        return await _stored(nc, ref)
    if ref.source is None or ref.blob is None:
        raise ObjectLostError(f"{ref.name()}: the Ref says neither where it is held nor its bytes")
    here = _local.get(ref.source)
    if here is not None:
        data = here(ref.digest)
        if data is None:
            raise ObjectLostError(_freed(ref))
        return data
    offered = protocol.Payload(
        codec=protocol.CODEC_PICKLE, blob=ref.blob, size=ref.size, source=ref.source, shm=ref.shm
    )
    try:
        pulled = await offers.pull(nc, offered)
    except offers.OfferGoneError as exc:
        raise ObjectLostError(f"{_freed(ref)} ({exc.message})") from exc
    # a view of a mapped file would change under a cache if its holder reused the file
    return bytes(pulled) if isinstance(pulled, memoryview) else pulled


def _freed(ref: Ref) -> str:
    return (
        f"{ref.name()} is gone: its holder freed it (no live Ref in the process that "
        "put it, and its grace period passed) or stopped; put it with durable=True to "
        "keep it beyond its holder"
    )


async def _stored(nc: NATS, ref: Ref) -> bytes:
    name = ref_sealing.object_name(ref.digest)
    try:
        sealed = await objects.get(nc, protocol.OBJECTS_BUCKET, name)
    except NotFoundError as exc:  # (ObjectLostError is one too: unseal stays outside)
        raise ObjectLostError(
            f"{ref.name()} is not in the {protocol.OBJECTS_BUCKET} store (never put "
            "there, or removed)"
        ) from exc
    return ref_sealing.unseal(ref.digest, sealed)
