"""Spilled payloads sealed by their name: knowing a blob's random id is the capability.

Every read of ``sp_blobs`` names its subject (``lattice/objects.py``), so a narrow
user may read an object whose name it knows and may not send the forms that list the
bucket. That is not enough on its own: a permission's ``*`` also matches a literal
``*`` token, and the server reads a wildcard there as one (probed on nats-server
2.15: a direct get of ``$O.sp_blobs.M.*`` answers the newest object's metadata, a
consumer created with filter ``$O.sp_blobs.C.*`` delivers every chunk). NATS has no
way to allow a token but refuse a literal wildcard. So a blob is stored under a hash of
its id and sealed (AES-256-GCM) with a key derived from its id: whoever reads the
stream by wildcard gets ciphertext under names that say nothing, and only a reader
that was given the id (in a call or a result it may see) can open it.

Each key seals one message (a blob id is a fresh ``uuid4`` for each payload), so the
nonce is fixed; a tampered chunk fails the tag as well as the object's SHA-256.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from superpose import protocol
from superpose.errors import SerializationError, SuperposeError

NONCE = bytes(12)
"""Fixed: every key seals exactly one payload."""
MAX_SEALED_BYTES = 2**31 - 1
"""The most AES-GCM seals in one message (``cryptography``'s limit)."""


@dataclass(frozen=True)
class Sealer:
    """One kind of sealed object: its labels keep its names and keys apart from every
    other kind's, so a blob id never opens a durable object, nor the reverse."""

    name_label: bytes
    key_label: bytes
    too_big: str
    """The refusal of an over-large object, with ``{size}`` and ``{limit}``: what it is
    and what to do instead."""

    def hidden_name(self, secret: str) -> str:
        """A hash of ``secret``: where its object is stored, telling nothing of it."""
        return hashlib.sha256(self.name_label + secret.encode()).hexdigest()

    def seal(self, secret: str, data: bytes | memoryview) -> bytes:
        if len(data) > MAX_SEALED_BYTES:
            raise SerializationError(self.too_big.format(size=len(data), limit=MAX_SEALED_BYTES))
        return self._cipher(secret).encrypt(NONCE, data, None)

    def open(self, secret: str, sealed: bytes) -> bytes | None:
        """The bytes sealed with ``secret``; None if they do not open with it (altered)."""
        try:
            return self._cipher(secret).decrypt(NONCE, sealed, None)
        except InvalidTag:
            return None

    def _cipher(self, secret: str) -> AESGCM:
        return AESGCM(hashlib.sha256(self.key_label + secret.encode()).digest())


BLOBS = Sealer(
    b"superpose blob name\0",
    b"superpose blob key\0",
    "a durable payload of {size:,} bytes is over the {limit:,} a blob holds: pass a "
    "smaller value, or make a direct call (`.remote()`), whose payloads are offered by "
    "the caller rather than stored",
)


KEYED = Sealer(
    b"superpose keyed result name\0",
    b"superpose keyed result key\0",
    "a stored result of {size:,} bytes is over the {limit:,} one holds",
)
"""An idempotency key's stored result, sealed with its invocation id (results are small:
big values are blobs, which the result only names)."""


def object_name(blob: str) -> str:
    """The name blob ``blob`` is stored under in ``sp_blobs``: a hash, not the id."""
    return protocol.blob_object_name(BLOBS.hidden_name(blob))


def seal(blob: str, data: bytes | memoryview) -> bytes:
    return BLOBS.seal(blob, data)


def unseal(blob: str, sealed: bytes) -> bytes:
    data = BLOBS.open(blob, sealed)
    if data is None:
        raise SuperposeError(f"blob {blob} does not open with its id: it was altered")
    return data
