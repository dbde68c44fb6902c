"""NATS JWTs (v2): claims signed with an nkey, as ``nats-io/jwt`` writes them.

A JWT is ``header.claims.signature``, each part base64url without padding; the
signature is Ed25519 over ``header.claims`` by the issuer's seed (``alg:
ed25519-nkey``). The server checks that chain (operator → account → user) on
every connection, so only these functions ever sign anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

from superpose.errors import LatticeError
from superpose.security import nkeys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
NO_LIMIT = -1
"""What ``nats-io/jwt`` writes for "unlimited"."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def encode(
    *, subject: str, name: str, nats: dict[str, Any], issuer_seed: str, expires_s: float = 0
) -> str:
    """A signed JWT about ``subject`` (a public key) issued by ``issuer_seed``'s key;
    valid for ``expires_s`` seconds (0: no expiry)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iat": now,
        "iss": nkeys.public_key(issuer_seed),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    if expires_s:
        claims["exp"] = now + int(expires_s)
    # As nats-io/jwt: the id is a hash of the claims without it.
    claims["jti"] = base64.b32encode(hashlib.sha256(_compact(claims)).digest()).decode().rstrip("=")
    signed = f"{_b64(_compact(HEADER))}.{_b64(_compact(claims))}"
    return f"{signed}.{_b64(nkeys.sign(issuer_seed, signed.encode()))}"


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (the server verifies; we only read our own)."""
    try:
        _, body, _ = token.split(".")
        claims: dict[str, Any] = json.loads(_unb64(body))
    except (ValueError, json.JSONDecodeError) as exc:
        raise LatticeError(f"not a NATS JWT: {token[:20]}…") from exc
    return claims


def operator(seed: str, *, name: str, system_account: str) -> str:
    """The operator's self-signed JWT: the root every server of the lattice trusts."""
    nats = {"type": "operator", "system_account": system_account}
    return encode(subject=nkeys.public_key(seed), name=name, nats=nats, issuer_seed=seed)


def account(
    operator_seed: str,
    account_public: str,
    *,
    name: str,
    jetstream: bool,
    signing_keys: list[dict[str, Any]] | None = None,
    revocations: dict[str, int] | None = None,
) -> str:
    """An account JWT: no limits on connections or data, and JetStream unbounded when
    ``jetstream`` (an account without JetStream limits has no JetStream at all).
    ``signing_keys``: scoped signing keys (``security/executor_identity.py``): a user
    one of them signs gets its template's permissions, whatever the user's JWT says.
    ``revocations``: user public key → unix time; the server refuses (and disconnects)
    that user when its JWT was issued at or before the time (``security/revocations.py``)."""
    js_limit = NO_LIMIT if jetstream else 0
    limits = {
        "subs": NO_LIMIT,
        "data": NO_LIMIT,
        "payload": NO_LIMIT,
        "imports": NO_LIMIT,
        "exports": NO_LIMIT,
        "wildcards": True,
        "conn": NO_LIMIT,
        "leaf": NO_LIMIT,
        "mem_storage": js_limit,
        "disk_storage": js_limit,
        "streams": js_limit,
        "consumer": js_limit,
    }
    nats: dict[str, Any] = {
        "type": "account",
        "limits": limits,
        "default_permissions": {"pub": {}, "sub": {}},
    }
    if signing_keys:
        nats["signing_keys"] = signing_keys
    if revocations:
        nats["revocations"] = dict(sorted(revocations.items()))
    return encode(subject=account_public, name=name, nats=nats, issuer_seed=operator_seed)


def user(
    account_seed: str, user_public: str, *, name: str, permissions: dict[str, Any] | None = None
) -> str:
    """A user JWT signed by its account. ``permissions`` holds ``pub``/``sub`` (each
    ``{"allow": [...], "deny": [...]}``) and maybe ``resp``; none means everything in
    the account."""
    nats = {
        "type": "user",
        "pub": {},
        "sub": {},
        **(permissions or {}),
        "subs": NO_LIMIT,
        "data": NO_LIMIT,
        "payload": NO_LIMIT,
    }
    return encode(subject=user_public, name=name, nats=nats, issuer_seed=account_seed)


def scoped_user(
    signer_seed: str,
    account_public: str,
    user_public: str,
    *,
    name: str,
    expires_s: float,
    tags: Sequence[str] = (),
) -> str:
    """A user JWT signed by a scoped signing key of ``account_public``: it carries no
    permissions or limits of its own (the server refuses a scoped user that does), the
    signing key's template decides them. ``tags`` (``name:value``) are generic claims the
    template may name (``{{tag(name)}}``): a scoped user may carry them."""
    nats: dict[str, Any] = {"type": "user", "issuer_account": account_public}
    if tags:
        nats["tags"] = list(tags)
    return encode(
        subject=user_public, name=name, nats=nats, issuer_seed=signer_seed, expires_s=expires_s
    )
