"""Ed25519 key pairs in NATS's nkey encoding (``SO…`` seeds, ``O…``/``A…``/``U…`` keys).

The ``nkeys`` package (what nats-py signs with) decodes and signs but has no call
that makes a new key: a seed is 32 random bytes from PyNaCl, encoded with the
package's own ``encode_seed`` (prefix byte, crc16, base32).
"""

from __future__ import annotations

from enum import Enum

import nacl.signing
import nkeys

from superpose.errors import LatticeError


class KeyKind(Enum):
    """What a key identifies; the prefix byte makes it visible in the encoding."""

    OPERATOR = nkeys.PREFIX_BYTE_OPERATOR
    ACCOUNT = nkeys.PREFIX_BYTE_ACCOUNT
    USER = nkeys.PREFIX_BYTE_USER


def new_seed(kind: KeyKind) -> str:
    """A fresh seed (the private half, from which the public key follows)."""
    raw = bytes(nacl.signing.SigningKey.generate())
    return bytes(nkeys.encode_seed(raw, kind.value)).decode()


def _pair(seed: str) -> nkeys.KeyPair:
    try:
        return nkeys.from_seed(seed.encode())
    except (nkeys.NkeysError, ValueError) as exc:
        raise LatticeError(f"not a valid nkey seed ({type(exc).__name__})") from exc


def public_key(seed: str) -> str:
    """The public key of a seed: ``O…``, ``A…`` or ``U…`` by its kind."""
    return bytes(_pair(seed).public_key).decode()


def sign(seed: str, data: bytes) -> bytes:
    """The Ed25519 signature of ``data`` by the seed's key."""
    return bytes(_pair(seed).sign(data))
