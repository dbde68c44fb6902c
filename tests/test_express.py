"""Express calls: a client sends a warm call straight to the executors hosting its bundle.

The node agent is off the call's path but still enforces it: the executor tells it
it took the call, and the agent times it, limits its memory, reports its progress
and counts it, as for a call it sent itself. These tests count express calls from the
node's own heartbeat, so they know the path they meant to test is the one taken.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fns
import superpose as sp
from conftest import Lattice, client_on, start_lattice, stop_lattice
from superpose import protocol
from test_cli import deploy, unique, write_app
from test_placement import WHERE, status


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    handle = start_lattice(tmp_path_factory.mktemp("express"), workers=1, gateway=False)
    yield handle
    stop_lattice(handle)


@pytest.fixture
def express_client(one_node: Lattice) -> Iterator[sp.Client]:
    with client_on(one_node) as client:
        yield client


def express_count(handle: Lattice) -> int:
    """Express calls the node has served, once two heartbeats in a row agree."""
    while True:
        (first,) = status(handle)["nodes"]
        time.sleep(protocol.NODE_HEARTBEAT_S + 0.2)
        (second,) = status(handle)["nodes"]
        if first["served"] == second["served"]:
            return int(second["express"])


def learn(client: sp.Client, call: Callable[[], object]) -> None:
    """After a first call through the agent (raising or not), the executor may take the
    function's calls directly; a client that met the bundle cold waits a moment before
    trying express again, which the test skips."""
    with contextlib.suppress(sp.RemoteError):
        call()
    client._express_cold.clear()


def test_warm_calls_go_straight_to_the_executor(
    one_node: Lattice, express_client: sp.Client
) -> None:
    learn(express_client, lambda: fns.square.remote(1))
    before = express_count(one_node)
    assert [fns.square.remote(i) for i in range(20)] == [i * i for i in range(20)]
    assert express_count(one_node) - before == 20


def test_failures_of_express_calls_are_reported_and_the_node_keeps_serving(
    one_node: Lattice, express_client: sp.Client
) -> None:
    """Raise, timeout, crash and memory limit, each on a call the executor took itself.
    The agent must still kill the executor on time and answer the caller."""
    before = express_count(one_node)
    learn(express_client, lambda: fns.fail.remote("first"))
    with pytest.raises(sp.RemoteError) as raised:
        fns.fail.remote("express")
    assert raised.value.type.endswith("Boom") and "express" in str(raised.value)

    learn(express_client, lambda: fns.sleepy.remote(0))
    with pytest.raises(sp.RemoteError) as timed_out:
        fns.sleepy.remote(30)
    assert timed_out.value.kind == protocol.ERR_TIMEOUT
    assert "timeout of 1 s" in timed_out.value.remote_message

    learn(express_client, lambda: fns.exit_if.remote(0))
    with pytest.raises(sp.RemoteError) as crashed:
        fns.exit_if.remote(3)
    assert crashed.value.kind == protocol.ERR_CRASHED
    assert "exited with code 3" in crashed.value.remote_message

    learn(express_client, lambda: fns.hog.remote(10))
    with pytest.raises(sp.RemoteError) as hogged:
        fns.hog.remote(1500)
    assert hogged.value.kind == protocol.ERR_MEMORY

    assert fns.square.remote(6) == 36
    assert express_count(one_node) - before >= 4  # every failing call went express


def test_a_busy_executor_passes_calls_on_to_the_node(
    one_node: Lattice, express_client: sp.Client
) -> None:
    learn(express_client, lambda: fns.sleepy.remote(0))
    before = express_count(one_node)
    start = threading.Barrier(2)
    results: list[str] = []

    def call() -> None:
        start.wait()
        results.append(fns.sleepy.remote(0.5))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["woke", "woke"]
    assert express_count(one_node) - before == 1  # the other was queued by the agent


def test_without_express_every_call_goes_through_the_agent(
    one_node: Lattice, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERPOSE_EXPRESS", "0")
    with client_on(one_node) as client:
        learn(client, lambda: fns.square.remote(1))
        before = express_count(one_node)
        assert [fns.square.remote(i) for i in range(5)] == [i * i for i in range(5)]
        assert express_count(one_node) == before


def test_express_calls_to_an_evicted_bundle_fall_back_to_the_queue_group(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One executor for two apps: each call evicts the other app's executor, which
    stops taking express calls first. The client's express try then finds no
    executor (or a quieting one passes the call on) and the node loads the bundle."""
    monkeypatch.setenv("SUPERPOSE_MAX_EXECUTORS", "1")
    handle = start_lattice(tmp_path_factory.mktemp("evict"), workers=1, gateway=False)
    try:
        names = [unique("evict") for _ in range(2)]
        folders: list[Path] = [
            write_app(tmp_path_factory.mktemp("apps") / n, {"app.py": f"{WHERE}\nTAG = {n!r}\n"})
            for n in names
        ]
        for folder in folders:
            deploy(handle, folder)
        with client_on(handle) as client:
            calls = [client.function(f"{n}.where") for n in names]
            for _ in range(6):
                for call in calls:
                    assert call.remote()
                    client._express_cold.clear()  # try express every time
    finally:
        stop_lattice(handle)


def test_an_express_subject_names_the_call_subject_it_falls_back_to() -> None:
    subject = protocol.express_subject("ab" * 32, "shop", "checkout")
    assert subject == f"sp.exec.{'ab' * 32}.shop.checkout"
    assert protocol.call_subject_of_express(subject) == protocol.call_subject("shop", "checkout")
