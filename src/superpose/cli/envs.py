"""``superpose env ls``: the lattice's environments, what they hold and who uses them."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING, Any

from superpose.cli import common

if TYPE_CHECKING:
    from superpose.client.client import Client

SHOWN_PACKAGES = 8


def cmd_env(ns: argparse.Namespace) -> int:
    from superpose.registry import environments

    async def body(client: Client) -> int:
        registry = await client.registry()
        live = (await client.nodes()).live()
        sizes = await environments.built_sizes(client.nc.jetstream(), registry.environments)
        found = environments.listing(registry, live, sizes)
        if ns.json:
            print(json.dumps(found, indent=2))
            return 0
        if not found:
            print("no environments (an app declares packages in requirements.txt, or pip=)")
        for env in found:
            print("\n".join(env_lines(env)))
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def env_lines(env: dict[str, Any]) -> list[str]:
    """One environment as ``env ls`` prints it."""
    packages = [f"{name} {version}" for name, version in env["packages"].items()]
    more = ", …" if len(packages) > SHOWN_PACKAGES else ""
    size = f"{env['size']} B built" if env["size"] is not None else "not stored built"
    built = ", ".join(env["built_on"]) or "no live node"
    return [
        f"{env['digest'][:12]}  Python {env['python']} on {env['platform']}  "
        f"{common.when(env['created'])}  {size}",
        f"  {len(packages)} {'package' if len(packages) == 1 else 'packages'}: "
        f"{', '.join(packages[:SHOWN_PACKAGES])}{more}",
        f"  used by: {', '.join(env['used_by']) or 'no deployed version (script mode)'}",
        f"  built on: {built}",
    ]


def add_commands(add: common.AddCommand) -> None:
    p = add("env", cmd_env, "list the lattice's environments: packages, who uses them, where built")
    p.add_argument("action", choices=["ls"], help="ls: list them")
    p.add_argument("--json", action="store_true")
