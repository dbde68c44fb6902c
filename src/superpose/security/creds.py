"""``.creds`` files: a user's JWT and seed in the layout ``nsc`` writes and nats-py reads
(``nats.connect(user_credentials=path)``)."""

from __future__ import annotations

import re
from pathlib import Path

from superpose.errors import LatticeError
from superpose.security.files import write_private

TEMPLATE = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""
_BLOCK = re.compile(r"-{3,}BEGIN [A-Z ]+-{3,}\s*\n\s*(\S+)\s*\n\s*-{3,}END [A-Z ]+-{3,}")


def creds_text(jwt: str, seed: str) -> str:
    return TEMPLATE.format(jwt=jwt, seed=seed)


def write_creds(path: Path, jwt: str, seed: str) -> Path:
    """The user's credentials at ``path``, mode 0600."""
    return write_private(path, creds_text(jwt, seed))


def read_creds(path: Path) -> tuple[str, str]:
    """(jwt, seed) of a creds file; a LatticeError naming it if it is not one."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise LatticeError(f"cannot read the credentials file {path}: {exc.strerror}") from exc
    blocks = _BLOCK.findall(text)
    if len(blocks) != 2:
        raise LatticeError(
            f"{path} is not a NATS credentials file (it needs a user JWT and a seed block)"
        )
    return blocks[0], blocks[1]
