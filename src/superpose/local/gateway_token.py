"""The admin token ``superpose up`` leaves in its state folder for the gateway.

A lattice started with a gateway needs at least one token, or nothing could use the
gateway until someone ran ``superpose token create``. ``up`` makes one admin token at
its first start and writes it to ``<home>/gateway.token``, readable by its owner only.
A later start keeps that file while its token is valid, and replaces it when the
token was revoked or the lattice's store is new (the bucket no longer knows it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from superpose.lattice import tokens
from superpose.lattice.connection import connect, ensure_assets

TOKEN_FILE = "gateway.token"
TOKEN_NAME = "superpose up"
"""The ``--name`` of the token ``up`` makes, as ``token ls`` shows it."""


def token_path(state_dir: Path) -> Path:
    return state_dir / TOKEN_FILE


async def ensure_admin_token(url: str, state_dir: Path, *, tls_ca: Path | None = None) -> Path:
    """``<state_dir>/gateway.token`` holding a valid admin token; its path."""
    path = token_path(state_dir)
    nc = await connect(url, name="superpose-supervisor", tls_ca=tls_ca)
    try:
        kv = (await ensure_assets(nc)).tokens
        if path.exists() and await tokens.is_valid(kv, path.read_text().strip()):
            return path
        text, _ = await tokens.create(kv, "admin", name=TOKEN_NAME)
    finally:
        await nc.close()
    write_private(path, text + "\n")
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte: created that way
    under another name, then renamed over, so no reader ever sees it wider or partial."""
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):  # left by a crash: its mode is unknown
        temp.unlink()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(temp, path)
