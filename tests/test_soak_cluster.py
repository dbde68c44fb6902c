"""Cluster soak (``make soak``): durable work and direct calls run on a 3-server
cluster while the leader of each durable stream is killed in turn (SIGKILL), and
once stopped gracefully (SIGTERM); nothing accepted may be lost or run twice.

``SUPERPOSE_SOAK_CLUSTER_N`` (default 2,000) scales the durable work.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

import durable_fns as dfns
import fns
import superpose as sp
from cluster import DURABLE_STREAMS, cluster_lattice, kill_server, leader_of, wait_whole
from conftest import client_on, superpose_cli

pytestmark = [pytest.mark.soak, pytest.mark.timeout(900)]

KILLS = [(stream, signal.SIGKILL) for stream in DURABLE_STREAMS] + [
    (DURABLE_STREAMS[1], signal.SIGTERM)
]


def test_soak_cluster_leaders_killed_in_turn(tmp_path: Path) -> None:
    total = int(os.environ.get("SUPERPOSE_SOAK_CLUSTER_N", "2000"))
    directory = tmp_path / "runs"
    directory.mkdir()
    stop = threading.Event()
    direct_failures: list[str] = []
    direct_calls = [0]

    def direct_load() -> None:
        while not stop.is_set():
            try:
                assert fns.square.with_options(retries=2).remote(3) == 9
            except sp.RemoteError as exc:
                direct_failures.append(str(exc))
            direct_calls[0] += 1

    with cluster_lattice(tmp_path / "lattice") as handle, client_on(handle):
        wait_whole(handle)
        loader = threading.Thread(target=direct_load, daemon=True)
        loader.start()
        futures: list[sp.Future] = []
        per_kill = total // len(KILLS)
        try:
            for round_, (stream, sig) in enumerate(KILLS):
                wait_whole(handle)
                first = round_ * per_kill
                futures += [
                    dfns.counted.spawn(str(directory), f"k{i}", 0.01)
                    for i in range(first, first + per_kill)
                ]
                kill_server(handle, leader_of(handle, stream), sig)
            results = sp.gather(*futures)
        finally:
            stop.set()
            loader.join(timeout=60)
        count = per_kill * len(KILLS)
        assert results == [f"k{i}" for i in range(count)]
        runs = [dfns.runs(str(directory), f"k{i}") for i in range(count)]
        assert [i for i, n in enumerate(runs) if n != 1] == [], "run twice or never"
        assert direct_failures == [], f"{len(direct_failures)} of {direct_calls[0]} failed"
        wait_whole(handle)
        assert "3 node(s)" in superpose_cli("status", url=handle.url, check=True).stdout
