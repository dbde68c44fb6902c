"""The lattice's state as one JSON-able dict: nodes, apps, versions."""

from __future__ import annotations

import time
from typing import Any

from superpose import protocol
from superpose.client.client import Client
from superpose.lattice.batch import js_api
from superpose.registry import routing


async def nodes(client: Client) -> list[protocol.NodeInfo]:
    """Every live node: the keys from the stream's subject list, then one get each.

    Not ``kv.keys()``: nats-py's watch can send its end marker before entries the
    server already sent, and then a freshly started lattice shows no nodes.
    """
    bucket = protocol.NODES_BUCKET
    info = await js_api(
        client.nc,
        protocol.stream_info_subject(protocol.kv_stream(bucket)),
        {"subjects_filter": protocol.kv_wildcard(bucket)},
    )
    subjects = (info.get("state") or {}).get("subjects") or {}
    keys = [protocol.kv_key(bucket, subject) for subject in subjects]
    found = []
    for key in keys:
        try:
            data = (await client.assets.nodes.get(key)).value
        except Exception:  # deleted (a node that stopped cleanly) or expired meanwhile
            continue
        if not data:
            continue
        try:
            node = protocol.NodeInfo.decode(data)
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
