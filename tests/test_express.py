"""Express calls: a client sends a warm call straight to the executors hosting its bundle.

The node agent is off the call's path but still enforces it: the executor tells it
it took the call, and the agent times it, limits its memory, reports its progress
and counts it, as for a call it sent itself. These tests count express calls from the
node's own heartbeat, so they know the path they meant to test is the one taken.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import nats.errors
import pytest

import fns
import superpose as sp
from conftest import Lattice, client_on, poll, start_lattice, stop_lattice
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


def node_now(client: sp.Client) -> protocol.NodeInfo:
    """The node's figures, asked of the node itself (a heartbeat can be seconds old)."""

    async def ask() -> protocol.NodeInfo:
        (node,) = (await client.nodes()).live()
        reply = await client.nc.request(protocol.node_control_subject(node.id), b"", timeout=10)
        return protocol.NodeInfo.decode(reply.data)

    return client.run(ask())


def express_grew(client: sp.Client, before: protocol.NodeInfo, at_least: int) -> int:
    """How many more express calls the node took, once it is ``at_least``: the agent
    hears ``took`` just after the caller has its answer, so the count may trail."""
    poll(lambda: node_now(client).express - before.express >= at_least, "express calls")
    return node_now(client).express - before.express


def learn(client: sp.Client, call: Callable[[], object]) -> None:
    """After a first call through the agent (raising or not), the executor may take the
    function's calls directly; a client that met the bundle cold waits a moment before
    trying express again, which the test skips."""
    with contextlib.suppress(sp.RemoteError):
        call()
    poll(lambda: all(taking_express(client, key) for key in node_now(client).warm), "express")
    client._express.forget_cold()


def taking_express(client: sp.Client, host: str) -> bool:
    """Whether an executor of ``host`` has subscribed its express subject (it does so on
    a connection of its own, opened in the background once loaded): a message no one
    takes is answered "no responders"; one taken is passed on, unreadable, to an agent."""

    async def ask() -> bool:
        try:
            await client.nc.request(protocol.express_subject(host, "nosuch", "fn"), b"", 5)
        except nats.errors.NoRespondersError:
            return False
        except nats.errors.TimeoutError:
            return True
        return True

    return client.run(ask())


def test_warm_calls_go_straight_to_the_executor(
    one_node: Lattice, express_client: sp.Client
) -> None:
    learn(express_client, lambda: fns.square.remote(1))
    before = node_now(express_client)
    assert [fns.square.remote(i) for i in range(20)] == [i * i for i in range(20)]
    assert express_grew(express_client, before, 20) == 20
    poll(lambda: status(one_node)["nodes"][0]["express"] >= 20, "status to show them")


def test_failures_of_express_calls_are_reported_and_the_node_keeps_serving(
    one_node: Lattice, express_client: sp.Client
) -> None:
    """Raise, timeout, crash and memory limit, each on a call the executor took itself.
    The agent must still kill the executor on time and answer the caller."""
    before = node_now(express_client)
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
    assert express_grew(express_client, before, 4) >= 4  # every failing call went express


def test_a_call_that_kills_its_executor_at_once_is_reported_not_lost(
    one_node: Lattice, express_client: sp.Client
) -> None:
    """The executor tells its agent it took the call before running it, so even a
    process that dies in the call's first instant leaves a caller with the crash
    (not a 10 s wait for a lost node). Also: right after each crash, the next call
    goes to a fresh executor, not to the dead one."""
    for _ in range(5):
        learn(express_client, lambda: fns.exit_if.remote(0))
        with pytest.raises(sp.RemoteError) as crashed:
            fns.exit_if.remote(4)
        assert "exited with code 4" in crashed.value.remote_message


def test_an_express_call_that_blocks_the_executors_loop_is_still_killed_on_time(
    one_node: Lattice, express_client: sp.Client
) -> None:
    """The executor cannot answer the agent's quiet while its loop is stuck: the kill
    goes ahead after the short wait."""
    learn(express_client, lambda: fns.stuck_loop.remote(0))
    with pytest.raises(sp.RemoteError) as timed_out:
        fns.stuck_loop.remote(30)
    assert timed_out.value.kind == protocol.ERR_TIMEOUT
    assert fns.stuck_loop.remote(0) == "unstuck"


def test_a_garbled_express_message_is_answered_with_bad_request(
    one_node: Lattice, express_client: sp.Client
) -> None:
    """An executor passes what it cannot read to its node, which answers it."""
    assert fns.square.remote(2) == 4  # the script's bundle is warm
    digest, _, app = express_client.script_bundle("fns")
    subject = protocol.express_subject(digest, app, "square")

    async def request() -> protocol.Result:
        reply = await express_client.nc.request(subject, b"\x93not msgpack map", timeout=10)
        return protocol.Result.decode(reply.data)

    result = express_client.run(request())
    assert result.error is not None and result.error.kind == protocol.ERR_BAD_REQUEST


def test_a_busy_executor_passes_calls_on_to_the_node(
    one_node: Lattice, express_client: sp.Client
) -> None:
    learn(express_client, lambda: fns.sleepy.remote(0))
    before = node_now(express_client)
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
    assert express_grew(express_client, before, 1) == 1  # the other was queued by the agent


def test_without_express_every_call_goes_through_the_agent(
    one_node: Lattice, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERPOSE_EXPRESS", "0")
    with client_on(one_node) as client:
        learn(client, lambda: fns.square.remote(1))
        before = node_now(client)
        assert [fns.square.remote(i) for i in range(5)] == [i * i for i in range(5)]
        # A "took" reaches the agent before its "done": once the node has counted the
        # five as served, any that had gone express would be counted as such too.
        after = poll(lambda: (n := node_now(client)).served - before.served >= 5 and n, "served")
        assert after.express == before.express


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
                    client._express.forget_cold()  # try express every time
    finally:
        stop_lattice(handle)


def test_an_express_subject_names_the_call_subject_it_falls_back_to() -> None:
    subject = protocol.express_subject("ab" * 32, "shop", "checkout")
    assert subject == f"sp.exec.{'ab' * 32}.shop.checkout"
    assert protocol.call_subject_of_express(subject) == protocol.call_subject("shop", "checkout")


def test_a_failure_to_account_for_an_express_call_does_not_stop_the_reader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The agent's reader of an executor's frames survives a failing ``took`` handler:
    if it stopped, every later frame of that executor would go unread and its calls
    would hang."""
    from superpose.node.executor_process import ExecutorProcess

    def broken(took: protocol.Took) -> None:
        raise KeyError("reply")

    executor = ExecutorProcess(None, None, print, print)  # type: ignore[arg-type]
    executor.on_took = broken
    with caplog.at_level("ERROR", logger="superpose.node"):
        executor._took(protocol.Took(b"", ""))
    assert "could not account for an express call" in caplog.text
