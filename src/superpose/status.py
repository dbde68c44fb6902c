"""The lattice's state as one JSON-able dict: nodes, apps, versions."""

from __future__ import annotations

import time
from typing import Any

from nats.js.errors import NoKeysError

from superpose import protocol
from superpose.client import Client


async def nodes(client: Client) -> list[protocol.NodeInfo]:
    kv = client.assets.nodes
    try:
        keys = await kv.keys()
    except NoKeysError:
        return []
    found = []
    for key in keys:
        try:
            entry = await kv.get(key)
        except Exception:
            continue
        if not entry.value:
            continue
        try:
            info = protocol.NodeInfo.decode(entry.value)
        except Exception:  # a node of another version: `status` must still answer
            continue
        if time.time() - info.seen < protocol.NODE_TTL_S:
            found.append(info)
    return sorted(found, key=lambda n: n.id)


async def lattice_status(client: Client) -> dict[str, Any]:
    registry = await client.registry()
    return {
        "lattice": client.url,
        "nodes": [
            {
                "id": n.id,
                "host": n.host,
                "pid": n.pid,
                "labels": n.labels,
                "slots": n.slots,
                "busy": n.busy,
                "queued": n.queued,
                "served": n.served,
                "warm": n.warm,
                "uptime_s": round(time.time() - n.started, 1),
            }
            for n in await nodes(client)
        ],
        "apps": registry.describe(),
    }
