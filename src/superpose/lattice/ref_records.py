"""What ``superpose objects ls`` shows: the objects of the lattice's Refs.

Ephemeral objects are listed from their holders' ``sp_refs`` records (one per holder
of a digest), durable ones from the ``sp_objects`` store itself. Listing the store
takes a consumer no request subject pins, which narrow roles may not make (docs:
"Object references"), so only an admin sees the durable objects; and since they are
stored under a hash of their digest (``ref_sealing.py``), the listing shows that name,
not the digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.js import JetStreamContext

from superpose import protocol
from superpose.errors import LatticeError
from superpose.lattice.kv_listing import current_entries

SEAL_OVERHEAD = 16
"""AES-GCM's tag, the bytes a sealed durable object has beyond its value."""


@dataclass
class ObjectRow:
    digest: str
    """An ephemeral object's digest; a durable one's stored name, a hash of its digest."""
    size: int
    durable: bool
    holders: list[str] = field(default_factory=list)
    """``<client id>@<node>`` (or the client id alone, off the lattice's nodes)."""


@dataclass
class Listing:
    rows: list[ObjectRow]
    unlisted: str | None = None
    """Why the durable objects are missing from ``rows`` (only an admin may list them)."""


async def list_objects(js: JetStreamContext) -> Listing:
    """Every object known, durable ones first, each digest once; the durable ones are
    left out, saying why, when these credentials may not list them."""
    unlisted = None
    try:
        durable = await _durable(js)
    except LatticeError as exc:
        durable, unlisted = [], exc.message
    rows = {row.digest: row for row in durable}
    for record in await _records(js):
        digest = str(record.get("digest", ""))
        row = rows.get(digest)
        if row is None:
            row = rows[digest] = ObjectRow(digest, int(record.get("size", 0)), durable=False)
        holder, node = str(record.get("holder", "")), str(record.get("node", ""))
        row.holders.append(f"{holder}@{node}" if node else holder)
    return Listing(sorted(rows.values(), key=lambda row: (not row.durable, row.digest)), unlisted)


async def _durable(js: JetStreamContext) -> list[ObjectRow]:
    try:
        store = await js.object_store(protocol.OBJECTS_BUCKET)
        infos = await store.list()
    except nats.js.errors.NotFoundError:  # raised for an empty store, too
        return []
    except nats.errors.Error as exc:  # a refused request goes unanswered
        raise LatticeError(
            f"cannot list the durable objects in {protocol.OBJECTS_BUCKET} ({exc}): only "
            "admin credentials may list them (listing the store would let any caller "
            "enumerate it); the ephemeral objects are listed"
        ) from exc
    return [
        ObjectRow(info.name, max(int(info.size or 0) - SEAL_OVERHEAD, 0), durable=True)
        for info in infos
        if not info.deleted
    ]


async def _records(js: JetStreamContext) -> list[dict[str, Any]]:
    try:
        bucket = await js.key_value(protocol.REFS_BUCKET)
    except nats.errors.Error as exc:
        raise LatticeError(f"cannot list {protocol.REFS_BUCKET}: {exc}") from exc
    return [json.loads(entry.value or b"{}") for entry in await current_entries(bucket)]
