"""Revoked users of the lattice account: NATS's own mechanism, the account JWT's
``revocations`` (``nats-io/jwt`` v2: user public key → unix time; the server refuses
a user whose JWT was issued at or before that time, and closes its connections when
an account JWT naming it is loaded).

The list lives in ``keys/SP.revocations.json`` (0600, beside the account's seed), so
every account JWT ``load_or_create`` signs carries it: a restarted ``up`` keeps every
revocation. Only this module reads or writes the file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from superpose.security.files import private_dir, read_json_map, write_private

FILE = "SP.revocations.json"
"""Under ``keys/``: the lattice account's revoked users."""


def load(keys_dir: Path) -> dict[str, int]:
    """Public key → when it was revoked (unix seconds); empty if nothing was."""
    what = "a revocations list (public key → time)"
    return read_json_map(keys_dir / FILE, what, lambda v: isinstance(v, int))


def add(keys_dir: Path, public_key: str) -> int:
    """Revoke ``public_key`` (a user's ``U…`` key) from now on; revoking it again keeps
    the first time. Returns the time it stands revoked from."""
    revoked = load(keys_dir)
    if public_key not in revoked:
        # A user's JWT is issued in whole seconds: one issued this very second is covered.
        revoked[public_key] = int(time.time())
        text = json.dumps(dict(sorted(revoked.items())), indent=2) + "\n"
        write_private(private_dir(keys_dir) / FILE, text)
    return revoked[public_key]
