"""``superpose secret set|ls|rm``: the lattice's secrets, by name.

A value is read from stdin when it is piped, else from a prompt that does not echo;
never from the command line, where it would stay in the shell's history and show in
``ps`` to every user of the machine. Nothing here prints a value.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from typing import TYPE_CHECKING

from superpose import config
from superpose.cli import common
from superpose.errors import BadRequestError

if TYPE_CHECKING:  # the client (and nats-py) is imported by the commands that use it
    from superpose.client.client import Client

NOT_FROM_ARGV = (
    "secret values are never taken from the command line, where they stay in your shell's "
    "history and show in `ps` to every user of this machine: pipe the value in "
    '(`superpose secret set {name} < file`, `printf %s "$VALUE" | superpose secret set {name}`) '
    "or type it at the prompt"
)


def cmd_secret_set(ns: argparse.Namespace) -> int:
    from superpose.client.secrets import set_secret
    from superpose.code.settings import check_secret_name, check_secret_value

    name = check_secret_name(ns.name)
    if ns.value is not None:
        raise BadRequestError(NOT_FROM_ARGV.format(name=name))
    value = check_secret_value(name, _read_value(name))

    async def body(client: Client) -> int:
        await set_secret(client.assets.secrets, name, value)
        print(f"secret {name} set")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def _read_value(name: str) -> str:
    """Piped: all of stdin, less one final line break (``echo`` adds it). A terminal: a
    prompt that does not echo what is typed."""
    if sys.stdin.isatty():
        return getpass.getpass(f"value of {name} (not shown): ")
    try:
        text = sys.stdin.read()
    except UnicodeDecodeError:
        raise BadRequestError(f"the value of secret {name} is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")


def cmd_secret_ls(ns: argparse.Namespace) -> int:
    from superpose.client.secrets import list_secrets

    async def body(client: Client) -> int:
        found = await list_secrets(client.assets.secrets)
        if ns.json:
            print(json.dumps([{"name": s.name, "updated": s.updated} for s in found], indent=2))
        elif not found:
            print("no secrets (set one with `superpose secret set NAME`)")
        else:
            width = max(len(s.name) for s in found)
            print(f"{'NAME':<{width}}  SET")
            for secret in found:
                print(f"{secret.name:<{width}}  {common.when(secret.updated)}")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_secret_rm(ns: argparse.Namespace) -> int:
    from superpose.client.secrets import remove_secret

    async def body(client: Client) -> int:
        await remove_secret(client.assets.secrets, ns.name)
        print(f"secret {ns.name} removed")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def add_commands(add: common.AddCommand) -> None:
    parent = add(
        "secret",
        cmd_secret_ls,
        "set, list and remove secrets: functions name them in secrets=[...]",
        lattice=False,
    )
    actions = parent.add_subparsers(dest="action", required=True, metavar="set|ls|rm")

    def action(name: str, fn: common.Command, help_text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        p.add_argument("--lattice", help=f"NATS URL of the lattice (or {config.ENV_LATTICE})")
        return p

    p = action("set", cmd_secret_set, "set a secret; the value is read from stdin or a prompt")
    p.add_argument("name", metavar="NAME", help="e.g. STRIPE_KEY")
    p.add_argument("value", nargs="?", help=argparse.SUPPRESS)  # refused, with the reason
    p = action("ls", cmd_secret_ls, "list the secrets set (names and when; never values)")
    p.add_argument("--json", action="store_true")
    p = action("rm", cmd_secret_rm, "remove a secret")
    p.add_argument("name", metavar="NAME")
