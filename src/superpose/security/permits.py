"""What a connection's own credentials let it publish, read back from its user JWT.

The server enforces a user's permissions and answers a refused publish with an
asynchronous ``permissions violation`` and no reply, so a request the user may not
send waits for its timeout. A client that knows its own allow and deny lists can
choose a form it may send (``lattice/results.py``: one direct get per result for a
narrow role, a batch get otherwise) or refuse at once with an error naming what was
refused (``client/logs.py``). Matching follows NATS: ``*`` is one token, ``>`` the
rest. Users without permissions in their JWT (admin, or an executor whose scoped
key's template the client cannot see) are ``UNLIMITED`` here; the server still
decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from superpose.errors import LatticeError
from superpose.security import jwt
from superpose.security.creds import read_creds


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether NATS pattern ``pattern`` (``*``, ``>``) covers the literal ``subject``."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


@dataclass(frozen=True, slots=True)
class Permits:
    """A user's publish permissions: ``allow`` None means no allow list (everything)."""

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()

    def may_publish(self, subject: str) -> bool:
        if self.allow is not None and not any(subject_matches(p, subject) for p in self.allow):
            return False
        return not any(subject_matches(p, subject) for p in self.deny)

    @property
    def narrow(self) -> bool:
        """An allow list: a narrow role (caller, viewer, deployer), pinned to its owner."""
        return self.allow is not None


UNLIMITED = Permits()


def of_claims(claims: dict[str, object]) -> Permits:
    """The publish permissions in a user JWT's claims (``nats.pub``)."""
    nats = claims.get("nats")
    pub = nats.get("pub") if isinstance(nats, dict) else None
    if not isinstance(pub, dict):
        return UNLIMITED
    allow, deny = pub.get("allow"), pub.get("deny")
    return Permits(
        allow=tuple(allow) if isinstance(allow, list) and allow else None,
        deny=tuple(deny) if isinstance(deny, list) else (),
    )


def of_creds(creds: Path | None) -> Permits:
    """The publish permissions of a credentials file; ``UNLIMITED`` without one or when
    it cannot be read (the server decides and reports what it refuses)."""
    if creds is None:
        return UNLIMITED
    try:
        return of_claims(jwt.claims_of(read_creds(creds)[0]))
    except LatticeError:
        return UNLIMITED
