"""``superpose token create|ls|revoke``: the gateway's bearer tokens.

A token's text is printed once, by ``create``, and never stored: the lattice keeps its
sha256 (``lattice/tokens.py``). ``ls`` shows ids, roles and apps, never a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING

from superpose import config, protocol
from superpose.cli import common, tenants
from superpose.lattice import tokens

if TYPE_CHECKING:  # the client (and nats-py) is imported by the commands that use it
    from superpose.client.client import Client


def cmd_token_create(ns: argparse.Namespace) -> int:
    # Checked before connecting: a refused argument stores nothing and needs no lattice.
    role = tokens.check_role(ns.role)
    app, name = tokens.check_app(ns.app), tokens.check_name(ns.name)

    async def body(client: Client) -> int:
        text, record = await tokens.create(client.assets.tokens, role, app, name)
        print(text)
        common.err(
            f"token {record.id} created ({_scope(record)}); it is shown only now: "
            'send it as "Authorization: Bearer <token>"'
        )
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_token_ls(ns: argparse.Namespace) -> int:
    async def body(client: Client) -> int:
        found = await tokens.listing(client.assets.tokens)
        if ns.json:
            rows = [
                {"id": r.id, "role": r.role, "app": r.app, "name": r.name, "created": r.created}
                for r in found
            ]
            print(json.dumps(rows, indent=2))
        elif not found:
            print("no tokens (create one with `superpose token create --role caller`)")
        else:
            print(f"{'ID':<{tokens.ID_CHARS}}  {'ROLE':<8}  {'APP':<16}  {'CREATED':<19}  NAME")
            for r in found:
                row = f"{r.id}  {r.role:<8}  {r.app or '*':<16}  {common.when(r.created):<19}"
                print(f"{row}  {r.name or ''}".rstrip())
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_token_revoke(ns: argparse.Namespace) -> int:
    token_id = tokens.check_id(ns.id)

    async def body(client: Client) -> int:
        record = await tokens.revoke(client.assets.tokens, token_id)
        print(f"token {record.id} revoked ({_scope(record)})")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def _scope(record: protocol.TokenRecord) -> str:
    return f"role {record.role}, " + (f"app {record.app}" if record.app else "every app")


def add_commands(add: common.AddCommand) -> None:
    parent = add(
        "token",
        cmd_token_ls,
        "create, list and revoke the HTTP gateway's bearer tokens",
        lattice=False,
    )
    actions = parent.add_subparsers(dest="action", required=True, metavar="create|ls|revoke")

    def action(name: str, fn: common.Command, help_text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        p.add_argument("--lattice", help=f"NATS URL of the lattice (or {config.ENV_LATTICE})")
        tenants.add_tenant_option(p)  # a tenant's gateway reads its tenant's tokens
        return p

    roles = "|".join(protocol.TOKEN_ROLES)
    p = action("create", cmd_token_create, "create a token and print it (the only time it shows)")
    p.add_argument("--role", required=True, metavar=roles, help="what the token may do")
    p.add_argument("--app", metavar="APP", help="limit the token to one app's routes")
    p.add_argument("--name", metavar="NAME", help="a note to tell tokens apart (who holds it)")
    p = action("ls", cmd_token_ls, "list the tokens (ids, roles, apps; never a secret)")
    p.add_argument("--json", action="store_true")
    p = action("revoke", cmd_token_revoke, "revoke a token: the gateway refuses it at once")
    p.add_argument("id", metavar="ID", help="a token id, as `superpose token ls` shows it")
