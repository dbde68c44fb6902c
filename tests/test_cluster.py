"""A lattice on a 3-server NATS cluster (issue 18): nodes and clients reach it by a
comma-separated URL, and durable work and calls survive the loss of a server, the
one leading the work stream among them. The long version is ``test_soak_cluster.py``."""

from __future__ import annotations

from pathlib import Path

import durable_fns as dfns
import fns
import superpose as sp
from cluster import cluster_lattice, kill_server, leader_of, wait_whole, warm_every_node
from conftest import client_on, superpose_cli
from superpose import protocol

ITEMS = 30


def test_calls_and_durable_work_survive_the_work_leaders_server(tmp_path: Path) -> None:
    directory = tmp_path / "runs"
    directory.mkdir()
    with cluster_lattice(tmp_path / "lattice") as handle, client_on(handle) as client:
        assert handle.url.count(",") == 2
        wait_whole(handle)  # every durable stream has 3 replicas, all current
        status = superpose_cli("status", url=handle.url, check=True)
        assert "3 node(s)" in status.stdout
        assert fns.square.remote(7) == 49
        warm_every_node(handle, directory)

        futures = [dfns.counted.spawn(str(directory), f"k{i}", 0.05) for i in range(ITEMS)]
        kill_server(handle, leader_of(handle, protocol.WORK_STREAM))

        assert sp.gather(*futures) == [f"k{i}" for i in range(ITEMS)]
        assert [dfns.runs(str(directory), f"k{i}") for i in range(ITEMS)] == [1] * ITEMS
        assert fns.square.remote(8) == 64
        assert client.url == handle.url
