"""Connect to a lattice and make sure its JetStream assets exist."""

from __future__ import annotations

import contextlib
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError as JSBadRequest
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from superpose import protocol
from superpose.errors import LatticeError

CONNECT_TIMEOUT_S = 5.0


async def connect(url: str, *, name: str) -> NATS:
    """A connection that reconnects forever and notices a dead server in seconds."""

    async def _quiet(_: Exception) -> None:
        return None

    try:
        return await nats.connect(
            servers=[url],
            name=name,
            connect_timeout=CONNECT_TIMEOUT_S,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            ping_interval=5,
            max_outstanding_pings=3,
            error_cb=_quiet,
        )
    except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
        raise LatticeError(
            f"cannot reach the lattice at {url}: {exc or type(exc).__name__}"
        ) from exc


class Assets:
    """Handles on the lattice's buckets and streams (see protocol.py for the names)."""

    def __init__(
        self,
        js: JetStreamContext,
        registry: KeyValue,
        nodes: KeyValue,
        bundles: ObjectStore,
        blobs: ObjectStore,
    ) -> None:
        self.js = js
        self.registry = registry
        self.nodes = nodes
        self.bundles = bundles
        self.blobs = blobs


async def _kv(js: JetStreamContext, **config: Any) -> KeyValue:
    try:
        return await js.key_value(config["bucket"])
    except Exception:
        try:
            return await js.create_key_value(KeyValueConfig(**config))
        except JSBadRequest:  # created concurrently by another process
            return await js.key_value(config["bucket"])


async def _obj(js: JetStreamContext, **config: Any) -> ObjectStore:
    try:
        return await js.object_store(config["bucket"])
    except Exception:
        try:
            return await js.create_object_store(
                bucket=config["bucket"], config=ObjectStoreConfig(**config)
            )
        except JSBadRequest:
            return await js.object_store(config["bucket"])


async def _ensure_logs_stream(js: JetStreamContext) -> None:
    try:
        await js.stream_info(protocol.LOGS_STREAM)
    except Exception:
        with contextlib.suppress(JSBadRequest):
            await js.add_stream(
                StreamConfig(
                    name=protocol.LOGS_STREAM,
                    subjects=[protocol.LOGS_WILDCARD],
                    storage=StorageType.FILE,
                    max_age=protocol.LOG_RETENTION_S,
                    max_bytes=protocol.LOG_MAX_BYTES,
                    discard=DiscardPolicy.OLD,
                )
            )


async def ensure_assets(nc: NATS) -> Assets:
    """Create (or open) every bucket and stream; safe to run from many processes."""
    js = nc.jetstream()
    try:
        registry = await _kv(js, bucket=protocol.REGISTRY_BUCKET, history=16)
        nodes = await _kv(js, bucket=protocol.NODES_BUCKET, ttl=protocol.NODE_TTL_S)
        bundles = await _obj(js, bucket=protocol.BUNDLES_BUCKET, storage=StorageType.FILE)
        blobs = await _obj(
            js, bucket=protocol.BLOBS_BUCKET, storage=StorageType.FILE, ttl=protocol.BLOB_TTL_S
        )
        await _ensure_logs_stream(js)
    except nats.errors.Error as exc:
        raise LatticeError(f"JetStream is not available on the lattice: {exc}") from exc
    return Assets(js, registry, nodes, bundles, blobs)
