"""The lattice's own set-up: JetStream assets and their replica count."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import RetentionPolicy, StorageType

from conftest import on_fresh_server
from superpose import protocol
from superpose.config import ENV_REPLICAS
from superpose.errors import LatticeError, SettingError
from superpose.lattice.batch import js_api
from superpose.lattice.connection import ensure_assets

EXPECTED_STREAMS = {
    f"KV_{protocol.REGISTRY_BUCKET}",
    f"KV_{protocol.NODES_BUCKET}",
    f"OBJ_{protocol.BUNDLES_BUCKET}",
    f"OBJ_{protocol.BLOBS_BUCKET}",
    protocol.LOGS_STREAM,
    protocol.TRACES_STREAM,
    protocol.WORK_STREAM,
    f"KV_{protocol.RESULTS_BUCKET}",
    f"KV_{protocol.DEAD_BUCKET}",
    f"KV_{protocol.CANCELS_BUCKET}",
    f"KV_{protocol.SCHEDULES_BUCKET}",
    f"KV_{protocol.ISSUED_BUCKET}",
    f"OBJ_{protocol.ENVS_BUCKET}",
    f"KV_{protocol.SECRETS_BUCKET}",
    f"KV_{protocol.TOKENS_BUCKET}",
    f"KV_{protocol.TRUST_BUCKET}",
    f"KV_{protocol.REFS_BUCKET}",
    f"OBJ_{protocol.OBJECTS_BUCKET}",
    f"KV_{protocol.DICTS_BUCKET}",
    f"KV_{protocol.DICTS_DURABLE_BUCKET}",
    protocol.QUEUES_STREAM,
    protocol.QUEUES_DURABLE_STREAM,
    f"KV_{protocol.MEMO_BUCKET}",
    f"KV_{protocol.MEMO_CLAIMS_BUCKET}",
    f"OBJ_{protocol.MEMO_VALUES_BUCKET}",
    f"KV_{protocol.LINEAGE_BUCKET}",
}


def test_assets_are_created_on_a_fresh_server(tmp_path: Path) -> None:
    found: dict[str, Any] = {}

    async def inspect(nc: NATS) -> None:
        js = nc.jetstream()
        found["streams"] = {info.config.name: info.config for info in await js.streams_info()}
        found["consumer"] = await js.consumer_info(protocol.WORK_STREAM, protocol.WORK_CONSUMER)
        await ensure_assets(nc)  # what every later process does: finds them, changes nothing
        found["again"] = {info.config.name for info in await js.streams_info()}

    asyncio.run(on_fresh_server(tmp_path, inspect))
    streams = found["streams"]
    assert set(streams) == EXPECTED_STREAMS
    assert found["again"] == EXPECTED_STREAMS
    assert streams[protocol.WORK_STREAM].retention == RetentionPolicy.WORK_QUEUE
    assert streams[protocol.WORK_STREAM].subjects == [protocol.WORK_WILDCARD]
    assert streams[f"KV_{protocol.NODES_BUCKET}"].max_age == protocol.NODE_TTL_S
    assert streams[f"KV_{protocol.RESULTS_BUCKET}"].max_age == protocol.RESULT_TTL_S
    assert streams[f"OBJ_{protocol.BLOBS_BUCKET}"].max_age == protocol.BLOB_TTL_S
    assert streams[f"KV_{protocol.SECRETS_BUCKET}"].max_msgs_per_subject == 1
    assert streams[f"KV_{protocol.REFS_BUCKET}"].storage == StorageType.MEMORY
    assert streams[f"KV_{protocol.REFS_BUCKET}"].max_age == protocol.REF_RECORD_TTL_S
    assert streams[f"OBJ_{protocol.OBJECTS_BUCKET}"].storage == StorageType.FILE
    assert streams[f"KV_{protocol.DICTS_BUCKET}"].storage == StorageType.MEMORY
    assert streams[f"KV_{protocol.DICTS_DURABLE_BUCKET}"].storage == StorageType.FILE
    assert streams[protocol.QUEUES_STREAM].retention == RetentionPolicy.WORK_QUEUE
    assert streams[protocol.QUEUES_STREAM].storage == StorageType.MEMORY
    consumer = found["consumer"].config
    assert consumer.filter_subject == protocol.WORK_ANY_FILTER
    assert consumer.ack_wait == protocol.ACK_WAIT_S


def test_more_replicas_than_servers_is_refused_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_REPLICAS, "3")
    with pytest.raises(LatticeError, match=r"cannot create \w+: replicas > 1.*REPLICAS"):
        asyncio.run(on_fresh_server(tmp_path))


def test_a_malformed_replica_count_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_REPLICAS, "three")
    with pytest.raises(SettingError, match="SUPERPOSE_REPLICAS='three'"):
        asyncio.run(on_fresh_server(tmp_path))


def test_a_work_consumer_with_another_ack_wait_is_given_this_one(tmp_path: Path) -> None:
    """An older superpose made replicated lattices' consumers with a 10 s ack wait; the
    next start with the right to (a node's user, admin here) sets its own, the rest kept."""
    found: dict[str, Any] = {}

    async def older_then_again(nc: NATS) -> None:
        js = nc.jetstream()
        subject = protocol.consumer_create_subject(protocol.WORK_STREAM, protocol.WORK_CONSUMER)
        info = await js.consumer_info(protocol.WORK_STREAM, protocol.WORK_CONSUMER)
        config = {"durable_name": protocol.WORK_CONSUMER, "ack_policy": "explicit"}
        config |= {"filter_subject": info.config.filter_subject, "ack_wait": 30 * 10**9}
        config |= {"max_deliver": -1, "max_ack_pending": 100_000, "max_waiting": 4096}
        config |= {"num_replicas": 1}
        await js_api(
            nc, subject, {"stream_name": protocol.WORK_STREAM, "config": config, "action": "update"}
        )
        found["older"] = (
            await js.consumer_info(protocol.WORK_STREAM, protocol.WORK_CONSUMER)
        ).config
        await ensure_assets(nc)
        found["now"] = (await js.consumer_info(protocol.WORK_STREAM, protocol.WORK_CONSUMER)).config

    asyncio.run(on_fresh_server(tmp_path, older_then_again))
    assert found["older"].ack_wait == 30
    assert found["now"].ack_wait == protocol.ACK_WAIT_S  # one server: 10 s
    assert found["now"].max_ack_pending == 100_000 and found["now"].max_deliver == -1
