"""The object store transfer against a real JetStream: round trips and refusals."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from nats.js.api import ObjectStoreConfig

from conftest import Lattice
from superpose.errors import NotFoundError
from superpose.lattice import objects
from superpose.lattice.connection import connect

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _with_bucket(lattice: Lattice, bucket: str, max_bytes: int, body: Any) -> Any:
    nc = await connect(lattice.url, name="test-objects")
    js = nc.jetstream()
    try:
        await js.create_object_store(bucket=bucket, config=ObjectStoreConfig(max_bytes=max_bytes))
        return await body(nc)
    finally:
        await js.delete_object_store(bucket)
        await nc.close()


def test_objects_round_trip_with_digest_check(lattice: Lattice) -> None:
    data = os.urandom(3 * objects.CHUNK_BYTES + 123)

    async def body(nc: Any) -> None:
        await objects.put(nc, "t_round", "x", data)
        assert await objects.get(nc, "t_round", "x") == data
        assert await objects.exists(nc.jetstream(), "t_round", "x")
        await objects.delete(nc, "t_round", "x")
        assert not await objects.exists(nc.jetstream(), "t_round", "x")
        with pytest.raises(NotFoundError, match="'missing'"):
            await objects.get(nc, "t_round", "missing")

    run(_with_bucket(lattice, "t_round", -1, body))


def test_a_refused_object_is_reported_and_leaves_no_chunks(lattice: Lattice) -> None:
    async def body(nc: Any) -> int:
        with pytest.raises(objects.ChunkRefused, match="refused a chunk"):
            await objects.put(nc, "t_small", "too-big", os.urandom(4 * objects.CHUNK_BYTES))
        info = await nc.jetstream().stream_info("OBJ_t_small")
        return int(info.state.messages)

    assert run(_with_bucket(lattice, "t_small", 2 * objects.CHUNK_BYTES, body)) == 0
