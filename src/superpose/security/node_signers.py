"""The executor signers of minted node users: one scoped signing key per node.

``superpose creds create --role node`` gives each node user a signing key of its own
(``executor_identity``'s template, so it mints executor users and nothing wider) and
lists its public key here; the ``SP`` account JWT carries every listed key. Revoking
that node (``creds revoke``) drops its key: nats-server then closes every connection
of a user that key signed and refuses the next, so a stolen worker's executors, and
any executor user its thief mints, stop with it. (With one key shared by every node,
they lived on until their JWTs expired, and the thief could mint more.)

The list lives in ``keys/SP.node-signers.json`` (0600): node user name → public key.
Only this module reads or writes it; the seeds are not kept here, only beside each
node's creds.
"""

from __future__ import annotations

import json
from pathlib import Path

from superpose.security.files import private_dir, read_json_map, write_private

FILE = "SP.node-signers.json"
"""Under ``keys/``: each minted node user's executor signer (public key)."""


def load(keys_dir: Path) -> dict[str, str]:
    """Node user name → its executor signer's public key; empty if none was minted."""
    what = "a node signers list (name → account public key)"
    return read_json_map(keys_dir / FILE, what, lambda v: isinstance(v, str) and v[:1] == "A")


def add(keys_dir: Path, name: str, public_key: str) -> None:
    _write(keys_dir, {**load(keys_dir), name: public_key})


def remove(keys_dir: Path, name: str) -> bool:
    """Drop ``name``'s signer (its node was revoked); whether there was one."""
    listed = load(keys_dir)
    if listed.pop(name, None) is None:
        return False
    _write(keys_dir, listed)
    return True


def _write(keys_dir: Path, listed: dict[str, str]) -> None:
    text = json.dumps(dict(sorted(listed.items())), indent=2) + "\n"
    write_private(private_dir(keys_dir) / FILE, text)
