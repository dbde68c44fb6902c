"""The streams behind shared dicts and queues, made with the lattice's other assets.

Two of each, memory and file: a Dict or Queue is in memory unless made with
``durable=True``. Made by hand, for settings nats-py's config types lack (per-message
TTL, delete markers with a TTL of their own, atomic batches).
"""

from __future__ import annotations

from typing import Any

from superpose import protocol

NS = 1_000_000_000
EXPIRY_MARKER_TTL_S = 60
"""Where a key expired, the server leaves a marker this long: watchers see the expiry."""
MAX_MSG_BYTES = protocol.SHARED_VALUE_MAX_BYTES + 64 * 1024
"""A value at the limit plus its headers."""


def dict_stream_config(durable: bool, replicas: int) -> dict[str, Any]:
    """A key-value bucket laid out as nats-py's (so ``nats kv`` reads it), history 1,
    with per-key TTLs (nats-server ≥ 2.11)."""
    bucket = protocol.dict_bucket(durable)
    return {
        "name": protocol.kv_stream(bucket),
        "subjects": [protocol.kv_wildcard(bucket)],
        "storage": "file" if durable else "memory",
        "num_replicas": replicas,
        "max_msgs_per_subject": 1,
        "max_msg_size": MAX_MSG_BYTES,
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "allow_direct": True,
        "discard": "new",
        "allow_msg_ttl": True,
        "subject_delete_marker_ttl": EXPIRY_MARKER_TTL_S * NS,
    }


def queue_stream_config(durable: bool, replicas: int) -> dict[str, Any]:
    """Every queue of one storage kind: work-queue retention (an acknowledged item is
    gone), direct gets (a put reads its subject's last sequence), atomic batches."""
    return {
        "name": protocol.queue_stream(durable),
        "subjects": [protocol.queue_wildcard(durable)],
        "retention": "workqueue",
        "storage": "file" if durable else "memory",
        "num_replicas": replicas,
        "max_msg_size": MAX_MSG_BYTES,
        "allow_direct": True,
        "allow_atomic": True,
    }


def configs(replicas: int) -> list[dict[str, Any]]:
    """The four streams, for ``connection.ensure_assets`` to make where missing."""
    return [
        *(dict_stream_config(durable, replicas) for durable in (False, True)),
        *(queue_stream_config(durable, replicas) for durable in (False, True)),
    ]
