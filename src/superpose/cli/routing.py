"""CLI commands for routing rules: ``canary``, ``pin``/``unpin``, ``lock``/``unlock``, ``trace``.

Each command changes or reads one registry rule (see ``superpose.registry.routing``);
the effect reaches every client and node through their registry mirrors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING, Any

import msgspec

from superpose.cli import common
from superpose.errors import BadRequestError

if TYPE_CHECKING:
    from superpose.client.client import Client


def cmd_canary(ns: argparse.Namespace) -> int:
    from superpose.registry import routing

    app = common.app_arg(ns.app)
    if ns.off and (ns.version or ns.percent is not None):
        raise BadRequestError("--off takes no version or --percent")
    if not ns.off and ns.version and ns.percent is None:
        raise BadRequestError(f"say how many sessions go to {ns.version}: --percent P (0-100)")
    if not ns.version and (ns.percent is not None or ns.key):
        raise BadRequestError(
            "--percent and --key need the version to send sessions to: "
            f"`superpose canary {app} VERSION --percent P` (`superpose canary {app}` "
            "shows the split)"
        )

    async def body(client: Client) -> int:
        registry = await client.registry()
        if ns.off:
            old = await routing.canary_off(registry, app)
            print(f"{app}: canary off" + (f" (was {common.short(old.version)})" if old else ""))
        elif ns.version:
            canary = await routing.set_canary(registry, app, ns.version, ns.percent, ns.key)
            key = f", session from {canary.key}" if canary.key else ""
            print(f"{app}: {canary.percent:g} % of sessions → {common.short(canary.version)}{key}")
        else:
            shown = routing.split(registry, app, (await client.nodes()).live())
            if ns.json:
                print(json.dumps(shown, indent=2))
                return 0
            print(f"{app}: latest {common.short(shown['latest'])}")
            if not shown["canary"]:
                print("  no canary: every session goes to latest")
            for line in rule_lines(shown):
                print(f"  {line}")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def rule_lines(rules: dict[str, Any]) -> list[str]:
    """An app's routing rules and the calls each version served (``registry.routing.split``),
    as ``canary APP`` and ``status`` print them."""
    lines = []
    if canary := rules["canary"]:
        key = f" by {canary['key']}" if canary["key"] else ""
        lines.append(f"canary: {canary['percent']:g} % → {common.short(canary['version'])}{key}")
    lines += [f"pinned: {fn} → {node}" for fn, node in rules["pins"].items()]
    lines += [f"locked: {dep} → {common.short(digest)}" for dep, digest in rules["lock"].items()]
    traffic: dict[str, int] = rules["traffic"]
    if rules["traffic_since"] is None:
        return [*lines, "calls served: unknown (no live node)"]
    since = common.when(rules["traffic_since"])
    if not traffic:
        return [*lines, f"calls served: none since {since} (when the first live node started)"]
    lines.append(f"calls served since {since} (the live nodes' counts, each from its own start):")
    total = sum(traffic.values())
    return lines + [
        f"  {common.short(digest)}: {count} ({100 * count / total:.1f} %)"
        for digest, count in traffic.items()
    ]


def cmd_pin(ns: argparse.Namespace) -> int:
    from superpose.registry import routing

    async def body(client: Client) -> int:
        live = [n.id for n in (await client.nodes()).live()]
        await routing.pin(await client.registry(), live, ns.function, ns.node)
        print(f"{ns.function} pinned to {ns.node}")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_unpin(ns: argparse.Namespace) -> int:
    from superpose.registry import routing

    async def body(client: Client) -> int:
        old = await routing.unpin(await client.registry(), ns.function)
        print(f"{ns.function} unpinned" + (f" (was on {old})" if old else " (was not pinned)"))
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_lock(ns: argparse.Namespace) -> int:
    from superpose.registry import routing

    app = common.app_arg(ns.app)
    if ns.show == bool(ns.link):
        raise BadRequestError(
            f"give a link to freeze (`superpose lock {app} pricing@3f2a91`) or --show"
        )

    async def body(client: Client) -> int:
        registry = await client.registry()
        if ns.show:
            print(json.dumps(routing.lockfile(registry, app), indent=2))
            return 0
        dep, digest = await routing.lock(registry, app, ns.link)
        print(f"{app} → {dep}@{common.short(digest)} (locked)")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_unlock(ns: argparse.Namespace) -> int:
    from superpose.registry import routing

    app = common.app_arg(ns.app)

    async def body(client: Client) -> int:
        old = await routing.unlock(await client.registry(), app, ns.dep)
        print(f"{app} → {ns.dep}: follows latest again (was locked to {common.short(old)})")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_trace(ns: argparse.Namespace) -> int:
    from superpose.registry import routing

    async def body(client: Client) -> int:
        spans = await routing.read_trace(client.nc, ns.id)
        if not spans:
            raise BadRequestError(f"no spans recorded for trace {ns.id} (kept for an hour)")
        if ns.json:
            print(json.dumps([msgspec.structs.asdict(span) for span in spans], indent=2))
            return 0
        depth = {spans[0].id: 0}
        for span in spans:
            level = depth.get(span.parent_id or "", -1) + 1
            depth[span.id] = level
            mark = "ok" if span.ok else "FAILED"
            where = "cached (no node ran it)" if span.cached else f"node={span.node}"
            print(
                f"{'  ' * level}{span.app}.{span.fn}@{span.digest[:12]}  {where}  "
                f"{span.duration_s * 1000:.1f} ms  {mark}"
            )
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def add_commands(add: common.AddCommand) -> None:
    p = add(
        "canary",
        cmd_canary,
        "send a share of an app's sessions to another version (or --off; no version: show "
        "the split and the calls each version served)",
    )
    p.add_argument("app")
    p.add_argument("version", nargs="?", help="digest prefix (6+ characters) or an alias")
    p.add_argument("--percent", type=float, help="share of sessions, 0-100")
    p.add_argument(
        "--key",
        help="where a request's session comes from: header:NAME or arg:NAME "
        "(default: X-Superpose-Session, else each request is its own session)",
    )
    p.add_argument("--off", action="store_true", help="send every session to latest")
    p.add_argument("--json", action="store_true", help="with no version: the split as JSON")

    p = add("pin", cmd_pin, "serve a function only on one node")
    p.add_argument("function", help="APP.FN")
    p.add_argument("node", help="node id, as `superpose status` lists it")

    p = add("unpin", cmd_unpin, "let a pinned function run on any node again")
    p.add_argument("function", help="APP.FN")

    p = add("lock", cmd_lock, "freeze the version an app's calls to another app resolve to")
    p.add_argument("app")
    p.add_argument("link", nargs="?", help="DEP@VERSION, e.g. pricing@3f2a91")
    p.add_argument("--show", action="store_true", help="print the app's runtime lockfile")

    p = add("unlock", cmd_unlock, "let an app's calls to another app follow its latest again")
    p.add_argument("app")
    p.add_argument("dep", help="the app it calls")

    p = add("trace", cmd_trace, "show which version of each function answered a traced request")
    p.add_argument("id", help="trace id (X-Superpose-Trace-Id, or printed by `call --trace`)")
    p.add_argument("--json", action="store_true")
