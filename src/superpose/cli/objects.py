"""``superpose objects ls|rm``: the objects Refs name (``sp.put``), their sizes and holders."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from dataclasses import asdict
from typing import TYPE_CHECKING

from superpose import config, protocol
from superpose.cli import common
from superpose.errors import BadRequestError, NotFoundError

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from superpose.client.client import Client

_DIGEST = re.compile(r"[0-9a-f]{64}")


def cmd_objects_ls(ns: argparse.Namespace) -> int:
    from superpose.lattice.ref_records import list_objects

    async def body(client: Client) -> int:
        listing = await list_objects(client.nc.jetstream())
        rows = listing.rows
        if listing.unlisted:
            common.err(f"warning: {listing.unlisted}")
        if ns.json:
            print(json.dumps([asdict(row) for row in rows], indent=2))
        elif not rows:
            print("no objects (sp.put(value) makes one)")
        else:
            print(f"{'DIGEST':<16}  {'SIZE':>12}  {'KIND':<9}  HOLDERS")
            for row in rows:
                kind = "durable" if row.durable else "ephemeral"
                held = ", ".join(row.holders) or "-"
                print(f"{row.digest[:16]:<16}  {row.size:>12}  {kind:<9}  {held}")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


def cmd_objects_rm(ns: argparse.Namespace) -> int:
    from superpose.lattice import objects

    digest = ns.digest.lower()
    if not _DIGEST.fullmatch(digest):
        raise BadRequestError(
            f"{ns.digest!r} is not an object's digest (64 hex digits, as `objects ls --json` "
            "shows them)"
        )

    async def body(client: Client) -> int:
        js = client.nc.jetstream()
        name = await _stored_name(js, digest)
        await objects.delete(client.nc, protocol.OBJECTS_BUCKET, name)
        print(f"object {digest[:12]} removed")
        return 0

    return asyncio.run(common.with_client(ns.lattice, body))


async def _stored_name(js: JetStreamContext, digest: str) -> str:
    """Where a durable object is stored: named by its digest (what a Ref shows) or by
    the stored name itself (what an admin's `objects ls` shows)."""
    from superpose.lattice import objects, ref_sealing

    for name in (ref_sealing.object_name(digest), digest):
        if await objects.size(js, protocol.OBJECTS_BUCKET, name) is not None:
            return name
    raise NotFoundError(f"no durable object {digest[:12]} in {protocol.OBJECTS_BUCKET}")


def add_commands(add: common.AddCommand) -> None:
    parent = add(
        "objects",
        cmd_objects_ls,
        "list and remove the objects of sp.put's Refs (sizes, durable or not, holders)",
        lattice=False,
    )
    actions = parent.add_subparsers(dest="action", required=True, metavar="ls|rm")

    def action(name: str, fn: common.Command, help_text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        p.add_argument("--lattice", help=f"NATS URL of the lattice (or {config.ENV_LATTICE})")
        return p

    p = action("ls", cmd_objects_ls, "list objects: digest, size, durable or ephemeral, holders")
    p.add_argument("--json", action="store_true", help="full digests, as JSON")
    p = action(
        "rm", cmd_objects_rm, "remove a durable object (its Refs then raise ObjectLostError)"
    )
    p.add_argument(
        "digest",
        metavar="DIGEST",
        help="the object's full digest (a Ref's), or its stored name (admin's objects ls)",
    )
