"""Functions that try, from inside an executor, to listen to other bundles' express
calls (tests/test_express_scope.py, script mode)."""

from __future__ import annotations

import os
from pathlib import Path

import nats

import superpose as sp
from executor_perm_fns import _lattice_url, _refused, _subscribe
from superpose import protocol, runtime
from superpose.security import jwt
from superpose.security.creds import read_creds


@sp.function
async def snoop(subjects: list[str]) -> dict[str, str]:
    """Subscribe to each subject (no queue group: a copy of every call) as the user this
    executor was started with: 'denied' or what happened instead. ``own`` stands for
    this bundle's own express subject."""
    here = runtime.current()
    assert here is not None
    own = protocol.express_wildcard(here.digest)
    subjects = [own if s == "own" else s for s in subjects]
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    creds = os.environ["SUPERPOSE_CREDS"]
    me = jwt.claims_of(read_creds(Path(creds))[0])["name"]
    nc = await nats.connect(
        _lattice_url(),
        user_credentials=creds,
        inbox_prefix=f"_INBOX.{me}",
        error_cb=on_error,
        allow_reconnect=False,
    )
    try:
        said = {s: await _refused(_subscribe(nc, s), errors, s) for s in subjects}
        return {"own" if s == own else s: outcome for s, outcome in said.items()}
    finally:
        await nc.close()


@sp.function
def square(x: int) -> int:
    return x * x
