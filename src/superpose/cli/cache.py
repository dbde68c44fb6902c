"""``superpose cache ls [APP]`` and ``superpose cache clear APP[.FN]``: memoized results.

An app or function is known when the registry has a version of it, or when the cache
holds entries of it (a script's app that was since redeployed under another name
still has its entries); anything else is refused, naming it, so a typo never
reports "0 cleared" as if it had worked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import TYPE_CHECKING

from superpose import config, protocol
from superpose.cli import common
from superpose.errors import BadRequestError, NotFoundError

if TYPE_CHECKING:
    from superpose.client.client import Client
    from superpose.lattice.memo_store import Listed


def cmd_cache_ls(ns: argparse.Namespace) -> int:
    from superpose.client.memo import store_of

    app = _checked_name(ns.app) if ns.app else None

    async def body(client: Client) -> int:
        listed = await (await store_of(client)).entries(app)
        if app is not None and not listed:
            await _known(client, app, None)
        rows = [_row(item) for item in listed]
        if ns.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no cached results" + (f" of {app}" if app else ""))
        else:
            _print_rows(rows)
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_cache_clear(ns: argparse.Namespace) -> int:
    from superpose.client.memo import store_of

    app, _, fn = ns.target.partition(".")
    _checked_name(app)
    if fn:
        _checked_name(fn)

    async def body(client: Client) -> int:
        cleared = await (await store_of(client)).clear(app, fn or None)
        if not cleared:
            await _known(client, app, fn or None)
        print(f"cleared {cleared} cached result(s) of {ns.target}")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def _checked_name(name: str) -> str:
    if not protocol.is_valid_name(name):
        raise BadRequestError(
            f"{name!r} is not an app or function name (letters, digits, _ and -; APP or APP.FN)"
        )
    return name


async def _known(client: Client, app: str, fn: str | None) -> None:
    """Refuse an app (or function) the registry never heard of: a typo, most likely."""
    registry = await client.registry()
    versions = registry.versions.get(app)
    if not versions:
        raise NotFoundError(
            f"no app named {app!r} is deployed and none has cached results (see `superpose ls`)"
        )
    functions = sorted({f for v in versions.values() for f in v.functions})
    if fn is not None and fn not in functions:
        raise NotFoundError(
            f"app {app!r} has no function {fn!r} and no cached results of one "
            f"(its functions: {', '.join(functions)})"
        )


def _row(item: Listed) -> dict[str, object]:
    app, fn, digest = item.key.split(".", 2)
    return {
        "app": app,
        "fn": fn,
        "key": digest,
        "state": "running" if item.entry.running else "cached",
        "bytes": item.size,
        "created": item.entry.created,
        "until": item.entry.until,
    }


def _print_rows(rows: list[dict[str, object]]) -> None:
    now = time.time()
    print(f"{'FUNCTION':<32}  {'KEY':<12}  {'STATE':<7}  {'BYTES':>8}  {'CREATED':<19}  EXPIRES IN")
    for row in rows:
        name = f"{row['app']}.{row['fn']}"
        left = float(row["until"]) - now  # type: ignore[arg-type]
        print(
            f"{name:<32}  {str(row['key'])[:12]:<12}  {row['state']:<7}  {row['bytes']:>8}  "
            f"{common.when(float(row['created'])):<19}  {_duration(left)}"  # type: ignore[arg-type]
        )


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def add_commands(add: common.AddCommand) -> None:
    parent = add(
        "cache", cmd_cache_ls, "list and clear memoized results (cache=True)", lattice=False
    )
    actions = parent.add_subparsers(dest="action", required=True, metavar="ls|clear")

    def action(name: str, fn: common.Command, help_text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        p.add_argument("--lattice", help=f"NATS URL of the lattice (or {config.ENV_LATTICE})")
        p.add_argument(
            "--creds", metavar="FILE", help=f"NATS credentials file (or {config.ENV_CREDS})"
        )
        return p

    p = action("ls", cmd_cache_ls, "list cached results, of one app or of all")
    p.add_argument("app", nargs="?", metavar="APP")
    p.add_argument("--json", action="store_true")
    p = action("clear", cmd_cache_clear, "drop an app's (or one function's) cached results")
    p.add_argument("target", metavar="APP[.FN]")
