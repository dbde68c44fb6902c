"""A lattice on a 3-server NATS cluster (issues 18 and 15): nodes and clients reach it
by a comma-separated URL, every server refuses a connection without credentials, and
durable work and calls survive the loss of a server: the one leading the bundles store
while every node is cold, then the one leading the work stream. The long version (2,000
durable invocations, four kills) is ``test_soak_cluster.py``."""

from __future__ import annotations

from pathlib import Path

import nats
from nats.js.api import ConsumerInfo

import durable_fns as dfns
import fns
import superpose as sp
from cluster import BUNDLES_STREAM, cluster_lattice, kill_server, leader_of, wait_whole
from conftest import client_on, raw_nats, superpose_cli
from superpose import protocol

ITEMS = 30


async def _bare_refusal(server: str) -> str:
    """What a server says to a connection without credentials."""
    try:
        nc = await nats.connect(server, allow_reconnect=False, connect_timeout=2)
    except nats.errors.Error as exc:
        return str(exc)
    await nc.close()
    return "accepted"


async def _work_consumer(url: str) -> ConsumerInfo:
    nc = await raw_nats(url)
    try:
        info: ConsumerInfo = await nc.jetstream().consumer_info(
            protocol.WORK_STREAM, protocol.WORK_CONSUMER
        )
        return info
    finally:
        await nc.close()


def test_calls_and_durable_work_survive_the_leaders_servers(tmp_path: Path) -> None:
    directory = tmp_path / "runs"
    directory.mkdir()
    with cluster_lattice(tmp_path / "lattice") as handle, client_on(handle) as client:
        assert handle.url.count(",") == 2
        for server in handle.url.split(","):  # credentials throughout: each server checks
            assert "Authorization Violation" in handle.run(_bare_refusal(server))
        wait_whole(handle)  # every durable stream has 3 replicas, all current
        status = superpose_cli("status", url=handle.url, check=True)
        assert "3 node(s)" in status.stdout
        assert fns.square.remote(7) == 49
        # A failover's elections must not look like a dead node (protocol.ack_wait_s).
        consumer = handle.run(_work_consumer(handle.url))
        assert consumer.config.ack_wait == protocol.ACK_WAIT_REPLICATED_S

        # Every node is cold for durable_fns and fetches it while its store elects a
        # leader. (Uploaded first: the upload is the caller's, before any node's fetch.)
        client.script_bundle(dfns.__name__)
        kill_server(handle, leader_of(handle, BUNDLES_STREAM))
        cold = [dfns.counted.spawn(str(directory), f"c{i}", 0.05) for i in range(ITEMS)]
        assert sp.gather(*cold) == [f"c{i}" for i in range(ITEMS)]

        wait_whole(handle)
        futures = [dfns.counted.spawn(str(directory), f"k{i}", 0.05) for i in range(ITEMS)]
        kill_server(handle, leader_of(handle, protocol.WORK_STREAM))
        assert sp.gather(*futures) == [f"k{i}" for i in range(ITEMS)]

        keys = [f"{prefix}{i}" for prefix in "ck" for i in range(ITEMS)]
        assert [dfns.runs(str(directory), key) for key in keys] == [1] * len(keys)
        assert fns.square.remote(8) == 64
        assert client.url == handle.url
