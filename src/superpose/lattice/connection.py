"""Connect to a lattice and make sure its JetStream assets exist."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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
from nats.js.errors import APIError as JSAPIError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from superpose import protocol
from superpose.config import ENV_REPLICAS
from superpose.errors import LatticeError

T = TypeVar("T")

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


async def _open_or_create(
    name: str, open_: Callable[[], Awaitable[T]], create: Callable[[], Awaitable[T]]
) -> T:
    """Open an asset, or create it; another process creating it at once is fine."""
    try:
        return await open_()
    except nats.errors.Error:
        pass
    try:
        return await create()
    except JSAPIError as exc:
        try:  # created concurrently by another process?
            return await open_()
        except nats.errors.Error:
            raise LatticeError(f"cannot create {name}: {exc.description}{_hint(exc)}") from exc


def _hint(exc: JSAPIError) -> str:
    if "replica" in (exc.description or "").lower():
        return f" (set {ENV_REPLICAS} to at most the number of JetStream servers)"
    return ""


def replicas_from_env() -> int:
    """How many copies JetStream keeps of each asset: 1 on one server, 3 on a cluster."""
    text = os.environ.get(ENV_REPLICAS) or "1"
    if not text.isdigit() or not 1 <= int(text) <= 5:
        raise LatticeError(f"{ENV_REPLICAS}={text!r}: expected a whole number from 1 to 5")
    return int(text)


async def _ensure_logs_stream(js: JetStreamContext, replicas: int) -> None:
    config = StreamConfig(
        name=protocol.LOGS_STREAM,
        subjects=[protocol.LOGS_WILDCARD],
        storage=StorageType.FILE,
        max_age=protocol.LOG_RETENTION_S,
        max_bytes=protocol.LOG_MAX_BYTES,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
    )
    await _open_or_create(
        protocol.LOGS_STREAM,
        lambda: js.stream_info(protocol.LOGS_STREAM),
        lambda: js.add_stream(config),
    )


async def ensure_assets(nc: NATS) -> Assets:
    """Create (or open) every bucket and stream; safe to run from many processes."""
    js = nc.jetstream()
    replicas = replicas_from_env()

    async def kv(**config: Any) -> KeyValue:
        settings = KeyValueConfig(replicas=replicas, storage=StorageType.FILE, **config)
        return await _open_or_create(
            config["bucket"],
            lambda: js.key_value(config["bucket"]),
            lambda: js.create_key_value(settings),
        )

    async def objects(**config: Any) -> ObjectStore:
        settings = ObjectStoreConfig(replicas=replicas, storage=StorageType.FILE, **config)
        return await _open_or_create(
            config["bucket"],
            lambda: js.object_store(config["bucket"]),
            lambda: js.create_object_store(bucket=config["bucket"], config=settings),
        )

    try:
        registry = await kv(bucket=protocol.REGISTRY_BUCKET, history=16)
        nodes = await kv(bucket=protocol.NODES_BUCKET, ttl=protocol.NODE_TTL_S)
        bundles = await objects(bucket=protocol.BUNDLES_BUCKET)
        blobs = await objects(bucket=protocol.BLOBS_BUCKET, ttl=protocol.BLOB_TTL_S)
        await _ensure_logs_stream(js, replicas)
    except nats.errors.Error as exc:
        raise LatticeError(f"JetStream is not available on the lattice: {exc}") from exc
    return Assets(js, registry, nodes, bundles, blobs)
