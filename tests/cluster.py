"""A lattice on a 3-server NATS cluster, for the cluster tests and the cluster soak.

Nodes and clients get the servers' URLs joined by commas (nats-py picks one at
random and fails over to the others), and every JetStream asset has 3 replicas,
so any one server may die. The lattice's supervisor restarts a killed server on
its port and store, as ``superpose up --servers 3`` does.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import Lattice, poll, start_lattice, stop_lattice
from superpose import protocol
from superpose.config import ENV_REPLICAS
from superpose.lattice.connection import connect
from superpose.local.cluster import EmbeddedCluster

SERVERS = 3
DURABLE_STREAMS = (
    protocol.WORK_STREAM,
    protocol.RESULTS_STREAM,
    protocol.kv_stream(protocol.NODES_BUCKET),
)
"""The streams a durable call and the nodes' heartbeats write to."""
BUNDLES_STREAM = protocol.object_stream(protocol.BUNDLES_BUCKET)
"""What a cold node reads its bundle from."""
WHOLE_STREAMS = (*DURABLE_STREAMS, BUNDLES_STREAM)


@contextmanager
def cluster_lattice(state_dir: Path, *, workers: int = 3) -> Iterator[Lattice]:
    """Nodes with one slot each, spread at random over a 3-server cluster; no gateway."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(ENV_REPLICAS, str(SERVERS))
        handle = start_lattice(state_dir, workers=workers, gateway=False, servers=SERVERS)
        try:
            yield handle
        finally:
            stop_lattice(handle)


def servers(handle: Lattice) -> EmbeddedCluster:
    cluster = handle.lattice.server
    assert isinstance(cluster, EmbeddedCluster)
    return cluster


async def _stream_cluster(url: str, stream: str) -> tuple[str, list[bool]]:
    """The stream's leader and whether each other replica is current."""
    nc = await connect(url, name="test-cluster")
    try:
        info = await nc.jetstream(timeout=2).stream_info(stream)
    finally:
        await nc.close()
    assert info.cluster is not None, f"{stream} is not replicated"
    return info.cluster.leader or "", [bool(r.current) for r in info.cluster.replicas or []]


def leader_of(handle: Lattice, stream: str) -> str:
    """The name of the server leading ``stream`` (``s1``…), once it has one."""

    def found() -> str | None:
        try:
            return handle.run(_stream_cluster(handle.url, stream))[0] or None
        except Exception:  # no leader yet: the request times out or is refused
            return None

    leader: str = poll(found, f"a leader of {stream}")
    return leader


def kill_server(handle: Lattice, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
    process = servers(handle).named(name).process
    assert process is not None, f"server {name} is not running"
    process.send_signal(sig)


def wait_whole(handle: Lattice, timeout: float = 60) -> None:
    """Every server running, and every durable stream and the bundles store led, with
    both followers current."""

    def whole() -> bool:
        if servers(handle).died() or any(s.process is None for s in servers(handle).servers):
            return False
        try:
            states = [handle.run(_stream_cluster(handle.url, s)) for s in WHOLE_STREAMS]
        except Exception:
            return False
        return all(
            leader and len(current) == SERVERS - 1 and all(current) for leader, current in states
        )

    poll(whole, "the cluster to be whole again", timeout)
