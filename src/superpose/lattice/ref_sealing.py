"""Durable objects sealed by their digest: reading one needs the digest, not a listing.

``sp_objects`` is read only in forms whose request subject names the object
(``protocol.blob_reads``), but a permission's ``*`` also admits a literal ``*``, so a
narrow user can still read the store by wildcard (``lattice/sealed.py`` says how). So a
durable object is stored under a hash of its digest and sealed (AES-256-GCM) with a
key derived from its digest, as spilled payloads are by their id: a wildcard read
yields ciphertext under names that say nothing, and the digest, which a Ref carries,
is what opens it.

Each key seals exactly one plaintext (the value whose sha256 is the digest), so the
fixed nonce is safe: sealing the same value twice gives the same bytes, and the store
still deduplicates.
"""

from __future__ import annotations

import hashlib

from nats.aio.client import Client as NATS

from superpose.errors import ObjectLostError
from superpose.lattice import objects
from superpose.lattice.sealed import Sealer

OBJECTS = Sealer(
    b"superpose ref name\0",
    b"superpose ref key\0",
    "a durable object of {size:,} bytes is over the {limit:,} one holds: put it without "
    "durable=True (its holder serves it), or split it",
)


def object_name(digest: str) -> str:
    """Where object ``digest`` is stored in ``sp_objects``: a hash, not the digest."""
    return OBJECTS.hidden_name(digest)


def seal(digest: str, data: bytes | memoryview) -> bytes:
    return OBJECTS.seal(digest, data)


def unseal(digest: str, sealed: bytes) -> bytes:
    """The value's bytes; ``ObjectLostError`` if they do not open with the digest or do
    not hash to it (the stored object was altered)."""
    data = OBJECTS.open(digest, sealed)
    if data is None or hashlib.sha256(data).hexdigest() != digest:
        raise ObjectLostError(
            f"durable object {digest[:12]} does not open with its digest: it was altered"
        )
    return data


async def store(nc: NATS, bucket: str, digest: str, data: bytes | memoryview) -> None:
    """Write the object ``digest`` names into ``bucket`` once: one already stored under
    its name is the same bytes (``unseal`` refuses anything else when it is read)."""
    name = object_name(digest)
    if await objects.size(nc.jetstream(), bucket, name) is None:
        await objects.put(nc, bucket, name, seal(digest, data))


async def read(nc: NATS, bucket: str, digest: str) -> bytes:
    """The bytes of the object ``digest`` names in ``bucket``: ``NotFoundError`` when
    it is not there, ``ObjectLostError`` (a kind of ``NotFoundError``) when altered."""
    return unseal(digest, await objects.get(nc, bucket, object_name(digest)))
