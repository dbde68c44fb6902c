"""Gateway tokens in the lattice: the ``sp_tokens`` bucket, written by ``superpose token``
and mirrored by every gateway.

A token is ``sp_<id>_<secret>``: the id names its record (and is what ``token ls``
and ``token revoke`` show and take), the secret is 32 random bytes, urlsafe base64.
Only the secret's sha256 is stored, so whoever reads the bucket cannot use a token,
and the text is printed once, when it is created. A plain hash is enough (no
salt, no slow KDF): the secret is random, not a password that could be guessed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import TYPE_CHECKING

from superpose import protocol
from superpose.errors import BadRequestError, NotFoundError

if TYPE_CHECKING:  # nats-py is imported by what reads the bucket: the CLI checks without it
    from nats.js.kv import KeyValue

PREFIX = "sp"
ID_CHARS = 12
"""Hex digits of a token's id: 48 random bits, unique enough for a lattice's tokens."""
SECRET_BYTES = 32
NAME_MAX_CHARS = 128
_ID_RE = re.compile(f"[0-9a-f]{{{ID_CHARS}}}")
_SECRET_RE = re.compile("[A-Za-z0-9_-]{43}")
"""32 bytes in urlsafe base64 without its padding."""
_NAME_RE = re.compile(r"[ -~]*")


def check_role(role: str) -> str:
    """``role``, or a BadRequestError naming the roles there are."""
    if role not in protocol.TOKEN_ROLES:
        raise BadRequestError(
            f"unknown role {role!r}: a token's role is one of {', '.join(protocol.TOKEN_ROLES)}"
        )
    return role


def check_app(app: str | None) -> str | None:
    if app is not None and not protocol.is_valid_name(app):
        raise BadRequestError(
            f"{app!r} is not a valid app name: letters, digits, _ and -, starting with a "
            f"letter or _, at most {protocol.NAME_MAX_CHARS} characters"
        )
    return app


def check_name(name: str | None) -> str | None:
    if name is not None and not (len(name) <= NAME_MAX_CHARS and _NAME_RE.fullmatch(name)):
        raise BadRequestError(
            f"{name!r} is not a valid token name: printable ASCII, at most "
            f"{NAME_MAX_CHARS} characters"
        )
    return name


def check_id(token_id: str) -> str:
    if not _ID_RE.fullmatch(token_id):
        raise BadRequestError(
            f"{token_id!r} is not a token id: {ID_CHARS} hex digits, as `superpose token ls` "
            "shows them"
        )
    return token_id


def parse(text: str) -> tuple[str, str] | None:
    """(id, secret) of a token's text, or None if it is not shaped like one."""
    prefix, _, rest = text.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != PREFIX or not _ID_RE.fullmatch(token_id) or not _SECRET_RE.fullmatch(secret):
        return None
    return token_id, secret


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(record: protocol.TokenRecord, secret: str) -> bool:
    """True if ``secret`` is the record's, compared in constant time."""
    return hmac.compare_digest(digest(secret), record.sha256)


def mint(
    role: str, app: str | None = None, name: str | None = None
) -> tuple[str, protocol.TokenRecord]:
    """A new token's text and the record that stands for it; nothing is stored yet.
    Every argument is checked first, so a refused one stores nothing."""
    role, app, name = check_role(role), check_app(app), check_name(name)
    token_id, secret = secrets.token_hex(ID_CHARS // 2), secrets.token_urlsafe(SECRET_BYTES)
    record = protocol.TokenRecord(
        id=token_id, role=role, sha256=digest(secret), created=time.time(), app=app, name=name
    )
    return f"{PREFIX}_{token_id}_{secret}", record


async def create(
    kv: KeyValue, role: str, app: str | None = None, name: str | None = None
) -> tuple[str, protocol.TokenRecord]:
    """Store a new token; its text (shown once, never stored) and its record."""
    text, record = mint(role, app, name)
    await kv.create(record.id, record.as_json())  # an id already taken fails, never overwrites
    return text, record


async def find(kv: KeyValue, token_id: str) -> protocol.TokenRecord | None:
    import nats.js.errors

    try:
        entry = await kv.get(token_id)
    except nats.js.errors.KeyNotFoundError:
        return None
    return protocol.TokenRecord.from_json(entry.value) if entry.value else None


async def is_valid(kv: KeyValue, text: str) -> bool:
    """True if ``text`` is a token the lattice holds (not revoked)."""
    parsed = parse(text)
    if parsed is None:
        return False
    record = await find(kv, parsed[0])
    return record is not None and matches(record, parsed[1])


async def revoke(kv: KeyValue, token_id: str) -> protocol.TokenRecord:
    """Remove a token and every stored revision of it; NotFoundError for an unknown id."""
    record = await find(kv, check_id(token_id))
    if record is None:
        raise NotFoundError(f"no token {token_id} (see `superpose token ls`)")
    await kv.purge(token_id)
    return record


async def listing(kv: KeyValue) -> list[protocol.TokenRecord]:
    """Every token, oldest first."""
    from superpose.lattice.kv_listing import current_entries  # nats-py: not for `--help`

    found = [
        protocol.TokenRecord.from_json(entry.value)
        for entry in await current_entries(kv)
        if entry.value
    ]
    return sorted(found, key=lambda record: record.created)
