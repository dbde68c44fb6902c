"""A node that dies mid-call: the caller hears it within seconds, not at its deadline;
a durable invocation is redelivered to another node."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fns
import superpose as sp
from conftest import Lattice, client_on, start_lattice, stop_lattice
from superpose import protocol
from superpose.client import dead_letters as dead


@pytest.fixture(scope="module")
def own_lattice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    """Nodes are killed here: keep it away from the shared lattice."""
    handle = start_lattice(tmp_path_factory.mktemp("loss"), gateway=False)
    yield handle
    stop_lattice(handle)


def _wait_for_file(path: Path, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return int(path.read_text())


def _kill_node_running(executor_pid: int) -> None:
    """SIGKILL the node agent that owns this executor, and the executor itself."""
    with open(f"/proc/{executor_pid}/stat") as stat:
        agent_pid = int(stat.read().rsplit(")", 1)[1].split()[1])
    os.kill(agent_pid, signal.SIGKILL)
    os.kill(executor_pid, signal.SIGKILL)


def test_a_call_on_a_node_that_dies_fails_fast_with_node_lost(
    own_lattice: Lattice, tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    with client_on(own_lattice), concurrent.futures.ThreadPoolExecutor(1) as pool:
        direct = fns.hold_once.with_options(timeout=120)
        future = pool.submit(direct.remote, str(marker), 60)
        _kill_node_running(_wait_for_file(marker))
        started = time.monotonic()
        with pytest.raises(sp.RemoteError) as info:
            future.result(timeout=60)  # the deadline is 130 s away: this must come far sooner
    assert info.value.type == "NodeLost"
    assert info.value.kind == protocol.ERR_CRASHED
    assert "stopped reporting" in info.value.remote_message
    assert time.monotonic() - started < 60


def test_a_call_with_retries_moves_to_another_node(own_lattice: Lattice, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    with client_on(own_lattice), concurrent.futures.ThreadPoolExecutor(1) as pool:
        direct = fns.hold_once.with_options(timeout=120, retries=1)
        future = pool.submit(direct.remote, str(marker), 60)
        _kill_node_running(_wait_for_file(marker))
        assert future.result(timeout=60) == "retried"


def test_an_idempotent_direct_call_moves_to_another_node(
    own_lattice: Lattice, tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    with client_on(own_lattice), concurrent.futures.ThreadPoolExecutor(1) as pool:
        direct = fns.hold_once.with_options(timeout=120, idempotent=True)
        future = pool.submit(direct.remote, str(marker), 60)
        _kill_node_running(_wait_for_file(marker))
        assert future.result(timeout=60) == "retried"


def test_a_durable_invocation_is_redelivered_when_its_node_is_killed(
    own_lattice: Lattice, tmp_path: Path
) -> None:
    """No retries asked for: redelivery of persisted work is not a retry, it is the contract."""
    marker = tmp_path / "pid"
    with client_on(own_lattice):
        future = fns.hold_once.with_options(timeout=120).spawn(str(marker), 60)
        _kill_node_running(_wait_for_file(marker))
        assert future.result(timeout=60) == "retried"
        assert future.accepted.is_set()


def test_an_invocation_whose_node_keeps_dying_is_failed_as_lost_and_dead_lettered(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With at most one delivery allowed, one kill is enough to reach the verdict."""
    monkeypatch.setenv("SUPERPOSE_MAX_DELIVER", "1")
    handle = start_lattice(tmp_path_factory.mktemp("lost"), gateway=False)
    marker = tmp_path / "pid"
    try:
        with client_on(handle) as client:
            future = fns.hold_once.with_options(timeout=120).spawn(str(marker), 60)
            _kill_node_running(_wait_for_file(marker))
            with pytest.raises(sp.RemoteError) as info:
                future.result(timeout=60)
            letters = client.run(dead.list_failed(client.assets))
    finally:
        stop_lattice(handle)
    assert info.value.kind == protocol.ERR_LOST
    assert info.value.type == "NodeLost"
    assert "delivered 2 times" in info.value.remote_message
    assert future.invocation_id in {letter.id for letter in letters}
