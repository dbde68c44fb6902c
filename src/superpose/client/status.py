"""The lattice's state as one JSON-able dict: nodes, apps, versions."""

from __future__ import annotations

import time
from typing import Any

from superpose import protocol
from superpose.client.client import Client
from superpose.lattice.kv_listing import current_entries
from superpose.registry import routing


async def nodes(client: Client) -> list[protocol.NodeInfo]:
    """Every live node, from the nodes bucket."""
    found = []
    for entry in await current_entries(client.assets.nodes):
        try:
            node = protocol.NodeInfo.decode(entry.value)
        except protocol.ProtocolError:  # a node of another version: `status` must still answer
            continue
        if time.time() - node.seen < protocol.NODE_TTL_S:
            found.append(node)
    return sorted(found, key=lambda n: n.id)


async def lattice_status(client: Client) -> dict[str, Any]:
    registry = await client.registry()
    live = await nodes(client)
    apps = registry.describe()
    for app in apps:
        app["routing"] = routing.split(registry, app["app"], live)
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
                "express": n.express,
                "warm": n.warm,
                "cold_loads": n.cold_loads,
                "sandbox": n.sandbox,
                "uptime_s": round(time.time() - n.started, 1),
            }
            for n in live
        ],
        "apps": apps,
    }
