"""Apps and their versions: ``deploy``, ``ls``, ``versions``, and the alias moves ``alias``,
``promote`` and ``rollback``.

Every alias move prints the same old → new line (``_move``): the old digest it shows
is what to move the alias back to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from superpose.cli import common
from superpose.errors import BadRequestError

if TYPE_CHECKING:  # the client (and nats-py) is imported by the commands that use it
    from superpose.client.client import Client
    from superpose.registry.mirror import Registry
    from superpose.registry.versions import Move


def cmd_deploy(ns: argparse.Namespace) -> int:
    from superpose.client.deploy import deploy

    async def body(client: Client) -> int:
        done = await deploy(client, Path(ns.path), ns.name, asgi=ns.asgi, progress=_say)
        if done.env is not None:
            print(f"environment {done.env.digest[:12]}")
        print(
            f"deployed {done.app} version {done.version[:12]}  "
            f"({done.files} files, {done.uploaded} uploaded, {done.size} bytes)"
        )
        print("functions: " + ", ".join(f"{done.app}.{f}" for f in done.functions))
        if done.asgi:
            print(f"http: {done.asgi} at /{done.app}/ on the gateway")
        print(done.version)
        return 0

    return asyncio.run(common.with_client(ns.lattice, body, key=ns.key))


def _say(step: str) -> None:
    print(step, flush=True)


def cmd_ls(ns: argparse.Namespace) -> int:
    async def body(client: Client) -> int:
        apps = (await client.registry()).describe()
        if ns.json:
            print(json.dumps(apps, indent=2))
            return 0
        if not apps:
            print("no apps deployed (try `superpose deploy ./examples/hello`)")
        for app in apps:
            latest = app["aliases"].get("latest", "")
            print(f"{app['app']}  ({len(app['versions'])} version(s), latest {latest[:12]})")
            for version in app["versions"]:
                marks = [a for a, d in app["aliases"].items() if d == version["version"]]
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(version["created"]))
                print(
                    f"  {version['version'][:12]}  {when}  {version['size']:>8} B  "
                    f"{', '.join(version['functions'])}"
                    + (f"  [{', '.join(marks)}]" if marks else "")
                )
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_versions(ns: argparse.Namespace) -> int:
    from superpose.registry import versions

    app = common.app_arg(ns.app)

    async def body(client: Client) -> int:
        found = versions.listing(await client.registry(), app)
        if ns.json:
            print(json.dumps(found, indent=2))
            return 0
        print(f"{app}: {len(found['versions'])} version(s), newest first")
        for row in found["versions"]:
            changes = row["changes"]
            diff = (
                f"+{changes['added']} -{changes['removed']} ~{changes['modified']}"
                if changes
                else "first"
            )
            marks = f"  [{', '.join(row['aliases'])}]" if row["aliases"] else ""
            print(
                f"  {row['version'][:12]}  {common.when(row['created'])}  "
                f"code {row['code'][:12]}  env {(row['env'] or '-')[:12]:<12}  "
                f"{row['size']:>8} B  {row['files']:>4} files  {diff:<14}{marks}".rstrip()
            )
            if row["packages"]:
                print(f"      packages: {', '.join(row['packages'])}")
            if not row["trusted"]:
                print(f"      not routed to: {_signed(row['signer'])}")
        common.print_untrusted(app, [r for r in found["untrusted"] if r["record"] != "version"])
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def _signed(signer: str) -> str:
    return "unsigned" if signer == "unsigned" else f"signed by untrusted key {signer}"


def cmd_alias(ns: argparse.Namespace) -> int:
    from superpose.registry import versions

    app = common.app_arg(ns.app)
    if ns.list or ns.name is None:
        return _list_aliases(ns.lattice, app)
    if ns.version is None:
        raise BadRequestError(
            f"say which version {ns.name!r} should point at: "
            f"`superpose alias {app} {ns.name} VERSION` (a digest prefix or an alias)"
        )
    return _move(ns.lattice, lambda registry: versions.move(registry, app, ns.name, ns.version))


def _list_aliases(url: str | None, app: str) -> int:
    from superpose.registry import versions

    async def body(client: Client) -> int:
        found = versions.listing(await client.registry(), app)
        created = {row["version"]: row["created"] for row in found["versions"]}
        width = max(map(len, found["aliases"]), default=0)
        for name, digest in found["aliases"].items():
            when = common.when(created[digest]) if digest in created else "unknown version"
            print(f"{name:<{width}}  → {common.short(digest)}  ({when})")
        return 0

    return asyncio.run(common.with_client(url, body))


def cmd_promote(ns: argparse.Namespace) -> int:
    from superpose.registry import versions

    app = common.app_arg(ns.app)
    return _move(ns.lattice, lambda registry: versions.promote(registry, app, ns.version))


def cmd_rollback(ns: argparse.Namespace) -> int:
    from superpose.registry import versions

    app = common.app_arg(ns.app)
    return _move(ns.lattice, lambda registry: versions.rollback(registry, app))


def _move(url: str | None, how: Callable[[Registry], Awaitable[Move]]) -> int:
    """Run one alias move and print it as old → new."""

    async def body(client: Client) -> int:
        move = await how(await client.registry())
        if move.changed:
            print(f"{move.app} {move.alias}: {common.short(move.old)} → {common.short(move.new)}")
        else:
            print(f"{move.app} {move.alias}: already {common.short(move.new)}; nothing moved")
        return 0

    return asyncio.run(common.with_client(url, body))


def add_commands(add: common.AddCommand) -> None:
    p = add("deploy", cmd_deploy, "bundle a folder or .py file and make it the app's latest")
    p.add_argument("path")
    p.add_argument("--name", help="app name (default: the folder or file name)")
    p.add_argument(
        "--asgi",
        metavar="MODULE:ATTR",
        help="also serve this ASGI app (FastAPI, Starlette) at /APP/ on the gateway, e.g. main:app",
    )
    p.add_argument(
        "--key",
        metavar="FILE",
        help="deployer key to sign with (default: $SUPERPOSE_HOME/keys/deployer.seed)",
    )

    p = add("ls", cmd_ls, "list apps, functions and versions")
    p.add_argument("--json", action="store_true")

    p = add(
        "versions",
        cmd_versions,
        "list an app's versions: time, code and environment, files and packages changed, aliases",
    )
    p.add_argument("app")
    p.add_argument("--json", action="store_true")

    p = add("alias", cmd_alias, "point an alias of an app at a version (or list the aliases)")
    p.add_argument("app")
    p.add_argument("name", nargs="?", help="alias name, e.g. stable")
    p.add_argument("version", nargs="?", help="digest prefix (6+ characters) or another alias")
    p.add_argument("--list", action="store_true", help="list the app's aliases")

    p = add("promote", cmd_promote, "make a version the app's latest")
    p.add_argument("app")
    p.add_argument("version", help="digest prefix (6+ characters) or an alias")

    p = add("rollback", cmd_rollback, "move latest back to the version it pointed at before")
    p.add_argument("app")
