"""``superpose creds create|ls``: NATS users of a role (``security/roles.py``), minted
with the lattice's account key where ``superpose up`` runs."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from superpose import config
from superpose.cli import common
from superpose.security import minting, roles


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
    return 0


def cmd_creds_ls(ns: argparse.Namespace) -> int:
    found = minting.listing(config.settings().home)
    if ns.json:
        print(json.dumps([asdict(m) for m in found], indent=2))
    elif not found:
        print("no users minted (make one with `superpose creds create --role caller`)")
    else:
        print(f"{'NAME':<24}  {'ROLE':<8}  {'APP':<16}  {'CREATED':<19}  FILE")
        for m in found:
            row = f"{m.name:<24}  {m.role:<8}  {m.app or '*':<16}"
            print(f"{row}  {common.when(m.created):<19}  {m.path}")
    return 0


def add_commands(add: common.AddCommand) -> None:
    parent = add("creds", cmd_creds_ls, "mint and list NATS credentials of a role", lattice=False)
    actions = parent.add_subparsers(dest="action", required=True, metavar="create|ls")
    mintable = "|".join(roles.MINTABLE)
    p = actions.add_parser("create", help="mint a user of a role and write its creds file")
    p.set_defaults(func=cmd_creds_create)
    p.add_argument("--role", required=True, metavar=mintable, help="what the user may do")
    p.add_argument("--app", metavar="APP", help="limit calls, logs and deploys to one app")
    p.add_argument("--name", metavar="NAME", help="the user's name (default: <role>-<random>)")
    p.add_argument("--out", metavar="FILE", help="where to write it (default: creds/<name>.creds)")
    p = actions.add_parser("ls", help="list the users `creds create` made here")
    p.set_defaults(func=cmd_creds_ls)
    p.add_argument("--json", action="store_true")
