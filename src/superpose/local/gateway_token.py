"""The admin token ``superpose up`` leaves in its state folder for the gateway.

A lattice started with a gateway needs at least one token, or nothing could use the
gateway until someone ran ``superpose token create``. ``up`` makes one admin token at
its first start and writes it to ``<home>/gateway.token``, readable by its owner only.
A later start keeps that file while its token is valid, and replaces it when the
token was revoked or the lattice's store is new (the bucket no longer knows it).
"""

from __future__ import annotations

from pathlib import Path

from nats.js.kv import KeyValue

from superpose.lattice import tokens
from superpose.security.files import write_private

TOKEN_FILE = "gateway.token"
TOKEN_NAME = "superpose up"
"""The ``--name`` of the token ``up`` makes, as ``token ls`` shows it."""


def token_path(state_dir: Path) -> Path:
    return state_dir / TOKEN_FILE


async def ensure_admin_token(kv: KeyValue, state_dir: Path) -> Path:
    """``<state_dir>/gateway.token`` holding a valid admin token of the lattice whose
    ``sp_tokens`` is ``kv``; its path."""
    path = token_path(state_dir)
    if path.exists() and await tokens.is_valid(kv, path.read_text().strip()):
        return path
    text, _ = await tokens.create(kv, "admin", name=TOKEN_NAME)
    write_private(path, text + "\n")
    return path
