"""Ed25519 deployer keys in NATS's own text encoding (nkeys), and the signatures they make.

A deployer key is an nkeys *user* seed (``SU…``, 58 characters), its public key the
matching ``U…`` (56 characters: base32 of a prefix byte, the 32-byte Ed25519 key and a
CRC-16). The same encoding NATS uses for its users, so the ``nk`` tool reads these
files and nobody has to learn a new format. A signature is the 64-byte Ed25519
signature in unpadded base64url. What is signed is a statement built by
``protocol`` (never the JSON bytes of a record, which a re-encoding could change).

It lives in ``lattice`` though it touches no NATS: the registry and the code store
(siblings) both sign and verify, and the layer below them may raise ``UserError``.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing
import nkeys

from superpose.errors import UserError
from superpose.security import nkeys as keypairs

SEED_FILE = "deployer.seed"
KEYS_FOLDER = "keys"
PUBLIC_KEY_CHARS = 56


def _crc16(data: bytes) -> int:
    return int(nkeys.crc16(bytearray(data)))


@dataclass(frozen=True)
class Signer:
    """A deployer's private key: signs statements, names itself by its public key."""

    seed: bytes
    """The nkeys seed (``SU…``), as read from its file."""

    @property
    def public_key(self) -> str:
        return keypairs.public_key(self.seed.decode())

    def sign(self, statement: bytes) -> str:
        signed = keypairs.sign(self.seed.decode(), statement)
        return base64.urlsafe_b64encode(signed).decode().rstrip("=")


def new_seed() -> bytes:
    """A deployer key: an nkeys user seed, made as the lattice's own identities are."""
    return keypairs.new_seed(keypairs.KeyKind.USER).encode()


def check_public_key(text: str) -> str:
    """``text`` if it is a deployer public key (``U…``); else a UserError saying what is."""
    _raw_public_key(text)
    return text


def _raw_public_key(text: str) -> bytes:
    what = f"{text[:60]!r} is not a deployer public key"
    if len(text) != PUBLIC_KEY_CHARS or not text.startswith("U"):
        raise UserError(f"{what}: expected 56 characters starting with U (`superpose key ls`)")
    try:
        data = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise UserError(f"{what}: it is not base32") from None
    body, crc = data[:-2], int.from_bytes(data[-2:], "little")
    if _crc16(body) != crc:
        raise UserError(f"{what}: its checksum is wrong (a typo?)")
    return body[1:]


def verify(public_key: str, statement: bytes, signature: str) -> bool:
    """Whether ``signature`` is ``public_key``'s over ``statement``; False for anything
    malformed (a bad key, bad base64, a wrong length): a verifier never raises."""
    try:
        raw = _raw_public_key(public_key)
        sig = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        nacl.signing.VerifyKey(raw).verify(statement, sig)
    except (UserError, binascii.Error, ValueError, nacl.exceptions.CryptoError):
        return False
    return True


def key_file(home: Path) -> Path:
    """The deployer key of a home folder: ``<home>/keys/deployer.seed``."""
    return home / KEYS_FOLDER / SEED_FILE


def user_key_file() -> Path:
    """The user's own deployer key, ``~/.superpose/keys/deployer.seed``: what a script run
    from a folder with no home key of its own signs with (the home key of ``~``)."""
    return key_file(Path.home() / ".superpose")


def default_key_file(home: Path) -> Path:
    """The key a client signs with unless told: its home folder's if there is one (``up``
    makes it), else the user's."""
    own = key_file(home)
    return own if own.exists() else user_key_file()


def create(path: Path) -> Signer:
    """A new key written to ``path`` (0600, its folder 0700); refuses to overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    seed = new_seed()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{path} already exists: a key is never overwritten") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(seed + b"\n")
    return Signer(seed)


def load(path: Path) -> Signer:
    """The key in ``path``, or a UserError naming the file and what is wrong with it."""
    try:
        seed = path.read_bytes().strip()
    except OSError as exc:
        raise UserError(f"cannot read the deployer key {path}: {exc.strerror}") from None
    try:
        prefix, _ = nkeys.decode_seed(seed)
    except (nkeys.NkeysError, ValueError):
        raise UserError(
            f"{path} is not a deployer key: expected an nkeys user seed (SU…), "
            "as `superpose key create FILE` writes"
        ) from None
    if prefix != nkeys.PREFIX_BYTE_USER:
        raise UserError(f"{path} holds an nkeys seed of another kind: expected a user seed (SU…)")
    return Signer(seed)


def load_or_create(path: Path) -> Signer:
    """The home folder's key, made on first use (how `up` and script mode get one)."""
    if path.exists():
        return load(path)
    try:
        return create(path)
    except UserError:  # another process made it meanwhile
        return load(path)
