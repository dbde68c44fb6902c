"""``superpose creds create|ls|revoke``: NATS users of a role (``security/roles.py``),
minted with the lattice's account key where ``superpose up`` runs.

``revoke`` writes the user's key into the account's revocations; if that lattice is
running, its supervisor is told to reload the servers' accounts (the signal ``tenant
create`` sends), the server closes the user's connections, and ``revoke`` returns
once the user's creds file (if it is still there) is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict
from pathlib import Path

from superpose import config
from superpose.cli import common
from superpose.cli.tenants import reload_running, wait_accepted
from superpose.errors import LatticeError, UserError
from superpose.security import minting, roles
from superpose.security.executor_identity import SIGNER_FILE

REFUSED_TIMEOUT_S = 15.0


def cmd_creds_create(ns: argparse.Namespace) -> int:
    out = Path(ns.out) if ns.out else None
    home = config.settings().home
    minted = minting.create(home, ns.role, app=ns.app, name=ns.name, out=out)
    print(minted.path)
    scope = f"app {minted.app}" if minted.app else "every app"
    common.err(
        f"user {minted.name} created (role {minted.role}, {scope}); connect with "
        f"--creds {minted.path} or {config.ENV_CREDS}={minted.path}"
    )
    if minted.role == "node":
        signer = Path(minted.path).parent / SIGNER_FILE
        common.err(f"{signer} is beside it: copy both, a worker mints its executors' users with it")
        state = reload_running(home)  # the servers must know the node's signer
        if state is not None:
            url, tls_ca = str(state["lattice"]), state.get("tls_ca")
            asyncio.run(_wait_signer_known(url, Path(minted.path), tls_ca))
    return 0


def cmd_creds_ls(ns: argparse.Namespace) -> int:
    home = config.settings().home
    found, revoked = minting.listing(home), minting.revoked(home)
    since = {m.name: _revoked_since(m, revoked) for m in found}
    if ns.json:
        print(json.dumps([asdict(m) | {"revoked": since[m.name]} for m in found], indent=2))
    elif not found:
        print("no users minted (make one with `superpose creds create --role caller`)")
    else:
        print(f"{'NAME':<24}  {'ROLE':<8}  {'APP':<16}  {'CREATED':<19}  {'REVOKED':<19}  FILE")
        for m in found:
            row = f"{m.name:<24}  {m.role:<8}  {m.app or '*':<16}"
            gone = common.when(t) if (t := since[m.name]) else "-"
            print(f"{row}  {common.when(m.created):<19}  {gone:<19}  {m.path}")
    return 0


def _revoked_since(minted: minting.Minted, revoked: dict[str, int]) -> int | None:
    """When ``minted`` was revoked, if it was (a row whose key is unknown: not)."""
    try:
        return revoked.get(minting.public_key_of(minted))
    except UserError:
        return None


def cmd_creds_revoke(ns: argparse.Namespace) -> int:
    home = config.settings().home
    minted = minting.revoke(home, ns.name)
    print(f"user {minted.name} revoked (key {minting.public_key_of(minted)})")
    state = reload_running(home)
    if state is None:
        print(f"no lattice is running in {home}: `superpose up` will refuse it")
        return 0
    creds = Path(minted.path)
    if not creds.is_file():
        print(f"the lattice {state['lattice']} was told to reload ({creds} is gone: not checked)")
        return 0
    asyncio.run(_wait_refused(str(state["lattice"]), creds, state.get("tls_ca")))
    print(f"the lattice {state['lattice']} refuses it now and closed its connections")
    return 0


async def _wait_signer_known(url: str, node_creds: Path, tls_ca: str | None) -> None:
    """Until the servers accept an executor user the new node's signer mints: they
    reloaded the account that lists it."""
    from superpose.security.executor_identity import new_executor_id, signer_beside

    signer = signer_beside(node_creds)
    assert signer is not None, "creds create wrote it"
    probe = signer.mint(new_executor_id(), expires_s=60)
    made = "the node's creds were made (with an executor signer of its own)"
    await wait_accepted(url, made, creds_text=probe, tls_ca=tls_ca)


async def _wait_refused(url: str, creds: Path, tls_ca: str | None) -> None:
    """Until ``creds`` are refused: the servers reloaded the account's revocations."""
    from superpose.lattice.connection import connect

    deadline = time.monotonic() + REFUSED_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            nc = await connect(url, name="superpose-revoke-check", creds=creds, tls_ca=tls_ca)
        except LatticeError:
            return
        await nc.close()
        await asyncio.sleep(0.1)
    raise LatticeError(
        f"the user was revoked, but the lattice at {url} still accepted {creds} after "
        f"{REFUSED_TIMEOUT_S:.0f} s; restart it with `superpose down` and `superpose up`, "
        "which refuses every revoked user"
    )


def add_commands(add: common.AddCommand) -> None:
    parent = add(
        "creds", cmd_creds_ls, "mint, list and revoke NATS credentials of a role", lattice=False
    )
    actions = parent.add_subparsers(dest="action", required=True, metavar="create|ls|revoke")
    mintable = "|".join(roles.MINTABLE)
    p = actions.add_parser("create", help="mint a user of a role and write its creds file")
    p.set_defaults(func=cmd_creds_create)
    p.add_argument("--role", required=True, metavar=mintable, help="what the user may do")
    p.add_argument("--app", metavar="APP", help="limit calls, logs and deploys to one app")
    p.add_argument("--name", metavar="NAME", help="the user's name (default: <role>-<random>)")
    p.add_argument(
        "--out",
        metavar="FILE|DIR",
        help="where to write it (a folder: <name>.creds in it; default creds/<name>.creds, "
        "a node's creds/<name>/<name>.creds); a node's own executor-signer.nk is written "
        "beside it, one node per folder",
    )
    p = actions.add_parser("ls", help="list the users `creds create` made here")
    p.set_defaults(func=cmd_creds_ls)
    p.add_argument("--json", action="store_true")
    p = actions.add_parser("revoke", help="refuse a minted user from now on (and disconnect it)")
    p.set_defaults(func=cmd_creds_revoke)
    p.add_argument("name", metavar="NAME", help="the user's name, as `creds ls` shows it")
