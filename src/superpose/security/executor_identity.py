"""Executors' own NATS users: each executor connects as a short-lived user of its own,
which may reply, log and make nested calls, and nothing else.

The lattice account ``SP`` lists a *scoped* signing key (role ``executor``) whose
template holds the permissions (``protocol.executor_publish_allowed`` and friends,
with ``{{name()}}`` standing for the user's name). The server gives every user that
key signs the template's permissions, whatever the user's own JWT says, so a node,
which holds that key's seed to mint its executors, can mint nothing wider: a stolen
worker machine's signer yields executor rights only.

Files: ``keys/executors.nk`` (the seed, kept with the other keys) and a copy beside
the node's creds, ``creds/executor-signer.nk``: what a remote worker needs besides
``node.creds``. A node user ``creds create`` mints gets a signer of its own instead
(``node_signers.py``), so revoking it stops its executors too. A node that has no
signer beside its creds starts its executors with its own creds, as before, and says
so once.
"""

from __future__ import annotations

import logging
import secrets as random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superpose import protocol
from superpose.errors import LatticeError
from superpose.security import jwt, nkeys
from superpose.security.creds import creds_text, read_creds
from superpose.security.files import write_private
from superpose.security.nkeys import KeyKind

log = logging.getLogger("superpose.security")

ROLE = "executor"
KEY_NAME = "executors"
"""``keys/executors.nk``: the scoped signing key's seed."""
SIGNER_FILE = "executor-signer.nk"
"""Beside ``node.creds``: what a node mints its executors' users with."""
NAME_TEMPLATE = "{{name()}}"
BUNDLE_TAG = "bundle"
"""The tag naming the bundle host (``protocol.host_key``) whose express calls a user may
take: only the user an agent mints for an executor's ``Load`` carries it."""
BUNDLE_TEMPLATE = "{{tag(bundle)}}"
APP_TAG = "app"
"""The tag naming the app whose dicts, queues and cache entries a user may touch: carried,
like ``bundle``, only by the user minted for an executor's ``Load`` (its *app user*)."""
APP_TEMPLATE = "{{tag(app)}}"
EXPIRES_S = 24 * 3600.0
"""An executor's user expires after a day: an executor lives as long as its node
keeps it, and a stolen creds file is worth a day at most. A new executor gets a new
user; nats-server closes a connection whose user expires (and a reconnect with it
is refused), so executors older than this are replaced when they next reconnect."""


def template() -> dict[str, Any]:
    """The permissions every executor user gets, with its name in its own subjects."""
    return {
        "pub": {
            "allow": list(
                dict.fromkeys(
                    protocol.executor_publish_allowed(NAME_TEMPLATE)
                    + protocol.executor_app_allowed(APP_TEMPLATE)
                )
            ),
            "deny": protocol.executor_publish_denied(),
        },
        "sub": {"allow": protocol.executor_subscribe_allowed(NAME_TEMPLATE, BUNDLE_TEMPLATE)},
        "resp": {"max": 1, "ttl": 0},
        "subs": jwt.NO_LIMIT,
        "data": jwt.NO_LIMIT,
        "payload": jwt.NO_LIMIT,
    }


def signing_key_entry(signer_public: str) -> dict[str, Any]:
    """The account JWT's entry for an executors' scoped signing key (by its public key)."""
    return {
        "kind": "user_scope",
        "key": signer_public,
        "role": ROLE,
        "template": template(),
        "description": "superpose executors: reply, log and nested calls only",
    }


def new_executor_id() -> str:
    """16 hex digits, the shape of a client id: the executor's client is named by it."""
    return random.token_hex(8)


@dataclass(frozen=True)
class ExecutorCreds:
    """What one executor connects with."""

    executor_id: str
    path: Path


@dataclass(frozen=True)
class ExecutorSigner:
    """Mints executor users: the scoped key's seed and the account it signs for."""

    seed: str
    account: str

    def public_key(self) -> str:
        return nkeys.public_key(self.seed)

    def mint(self, executor_id: str, expires_s: float = EXPIRES_S, tags: Sequence[str] = ()) -> str:
        """The text of a creds file for a new user named ``executor_id``."""
        user_seed = nkeys.new_seed(KeyKind.USER)
        token = jwt.scoped_user(
            self.seed,
            self.account,
            nkeys.public_key(user_seed),
            name=executor_id,
            expires_s=expires_s,
            tags=tags,
        )
        return creds_text(token, user_seed)

    def mint_app(self, executor_id: str, host: str, app: str) -> str:
        """Creds text for the executor ``executor_id``'s *app user*, handed over in its
        ``Load`` frame: it may also take the express calls of ``host`` and use ``app``'s
        dicts, queues and cache entries. The first user, minted while the executor was
        neutral, may do none of these."""
        return self.mint(executor_id, tags=[f"{BUNDLE_TAG}:{host}", f"{APP_TAG}:{app}"])

    def mint_file(self, folder: Path) -> ExecutorCreds:
        """A new executor user's creds written to ``folder`` (0600)."""
        executor_id = new_executor_id()
        path = write_private(folder / f"executor-{executor_id}.creds", self.mint(executor_id))
        return ExecutorCreds(executor_id, path)


def signer_beside(node_creds: Path) -> ExecutorSigner | None:
    """The signer kept beside ``node_creds`` (``executor-signer.nk``), or None if there is
    none; a LatticeError naming the file if it is not a usable account seed."""
    path = node_creds.parent / SIGNER_FILE
    if not path.is_file():
        return None
    seed = path.read_text().strip()
    try:
        public = nkeys.public_key(seed)
    except LatticeError as exc:
        raise LatticeError(f"{path}: {exc.message}; copy it again from the lattice") from exc
    if not public.startswith("A"):
        raise LatticeError(f"{path} holds a key of the wrong kind (not an account signing key)")
    token, _ = read_creds(node_creds)
    claims = jwt.claims_of(token)
    account = str(claims.get("nats", {}).get("issuer_account") or claims.get("iss", ""))
    return ExecutorSigner(seed, account)
