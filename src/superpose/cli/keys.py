"""``superpose key create|trust|ls|untrust``: deployer keys and the lattice's trust in them.

A deployer key is an nkeys user seed in a file of its own (0600). ``up`` makes the
home folder's and trusts it; a second deployer makes one with ``key create``, sends
the public key it prints to someone already trusted, who runs ``key trust``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

from superpose import config
from superpose.cli import common

if TYPE_CHECKING:  # the client (and nats-py) is imported by the commands that use it
    from superpose.client.client import Client
    from superpose.registry.trust import TrustedKeys


def cmd_key_create(ns: argparse.Namespace) -> int:
    from superpose.lattice import signing

    signer = signing.create(Path(ns.file))
    print(f"created {ns.file} (keep it secret; it is readable by you only)")
    print(f"public key: {signer.public_key}")
    print(f"to let it deploy, someone trusted runs: superpose key trust {signer.public_key}")
    return 0


async def _trusted_keys(client: Client) -> TrustedKeys:
    from superpose.registry.trust import TrustedKeys

    keys = TrustedKeys(client.assets.trust)
    await keys.start()
    return keys


def cmd_key_trust(ns: argparse.Namespace) -> int:
    from superpose.lattice import signing

    public_key = signing.check_public_key(ns.public_key)

    async def body(client: Client) -> int:
        keys = await _trusted_keys(client)
        try:
            await keys.trust(public_key, ns.name or "")
        finally:
            await keys.stop()
        print(f"trusted {public_key}" + (f" ({ns.name})" if ns.name else ""))
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_key_untrust(ns: argparse.Namespace) -> int:
    from superpose.lattice import signing

    public_key = signing.check_public_key(ns.public_key)

    async def body(client: Client) -> int:
        keys = await _trusted_keys(client)
        try:
            await keys.untrust(public_key)
        finally:
            await keys.stop()
        print(f"no longer trusted: {public_key}")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_key_ls(ns: argparse.Namespace) -> int:
    async def body(client: Client) -> int:
        keys = await _trusted_keys(client)
        await keys.stop()
        found = sorted(keys.keys.items(), key=lambda item: item[1].added)
        if ns.json:
            rows = [{"key": k, "name": v.name, "added": v.added} for k, v in found]
            print(json.dumps(rows, indent=2))
        elif not found:
            print("no trusted deployer keys (`superpose up` trusts its home folder's)")
        for key, record in [] if ns.json else found:
            print(f"{key}  {common.when(record.added)}  {record.name}".rstrip())
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def add_commands(add: common.AddCommand) -> None:
    parent = add(
        "key", cmd_key_ls, "deployer keys: create one, trust or untrust it, list them", False
    )
    actions = parent.add_subparsers(dest="action", required=True, metavar="create|trust|ls|untrust")

    def action(
        name: str, fn: common.Command, help_text: str, lattice: bool = True
    ) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        if lattice:
            p.add_argument("--lattice", help=f"NATS URL of the lattice (or {config.ENV_LATTICE})")
        return p

    p = action("create", cmd_key_create, "write a new deployer key to FILE", lattice=False)
    p.add_argument("file", metavar="FILE")
    p = action("trust", cmd_key_trust, "let a deployer key deploy and move aliases")
    p.add_argument("public_key", metavar="PUBKEY", help="the U… key `key create` printed")
    p.add_argument("--name", help="who it is, for `key ls` (e.g. alice@laptop)")
    p = action("ls", cmd_key_ls, "list the lattice's trusted deployer keys")
    p.add_argument("--json", action="store_true")
    p = action("untrust", cmd_key_untrust, "stop trusting a deployer key")
    p.add_argument("public_key", metavar="PUBKEY")
