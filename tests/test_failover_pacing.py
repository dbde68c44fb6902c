"""How a node rides out a failover (issue 18): a write or a heartbeat sent to a server
as it died is never answered, so each try is bounded and tried again soon; the
stream with no leader meanwhile refuses every try, and the first one it takes lands."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest
from nats.aio.client import Client as NATS

from conftest import Lattice
from superpose import protocol
from superpose.code import store
from superpose.errors import LatticeError, NotFoundError
from superpose.lattice.connection import Assets, connect
from superpose.local.embedded import find_nats_server, free_port
from superpose.node import heartbeat, result_store
from superpose.node.executor import main as executor_main
from superpose.node.heartbeat import Heartbeat
from superpose.node.link import Link


def test_a_write_that_is_never_answered_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(result_store, "WRITE_ATTEMPT_S", 0.05)
    tries: list[int] = []

    async def lost_then_refused_then_stored() -> str:
        tries.append(1)
        if len(tries) == 1:
            await asyncio.Event().wait()  # sent to a server that died: no answer, ever
        if len(tries) == 2:
            raise ConnectionError("no responders: the stream has no leader yet")
        return "stored"

    with caplog.at_level(logging.WARNING, "superpose.node.durable"):
        asyncio.run(result_store.until_done(lost_then_refused_then_stored, "store 1 results"))
    assert len(tries) == 3
    warnings = [r for r in caplog.records if "could not store 1 results" in r.getMessage()]
    assert len(warnings) == 1, "one warning per outage, not one per try"


def test_a_heartbeat_refused_until_its_bucket_exists_lands_at_once(
    lattice: Lattice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real bucket that does not exist yet stands in for a stream with no leader:
    every beat is refused until it does, and the first beat it can take is stored
    without waiting for the next heartbeat interval."""
    monkeypatch.setattr(protocol, "NODE_HEARTBEAT_S", 0.05)
    bucket = f"test_beats_{uuid.uuid4().hex[:8]}"

    async def scenario() -> bytes:
        nc = await connect(lattice.url, name="test-heartbeat")
        js = nc.jetstream()
        try:
            await js.create_key_value(bucket=bucket)
            nodes = await js.key_value(bucket)
            await js.delete_key_value(bucket)  # the handle stays; its writes are refused
            assets = cast(Assets, type("Assets", (), {"nodes": nodes}))
            link = Link("n-beats")
            link.connected(nc)
            link.assets_found(assets)
            info = protocol.NodeInfo(id="n-beats", host="h", pid=1, labels={}, slots=1)
            beats = Heartbeat(link, lambda: info, lambda coro: None)
            beating = asyncio.create_task(beats.beat_forever())
            await asyncio.sleep(0.3)  # several refused beats
            await js.create_key_value(bucket=bucket)  # a leader again
            while True:
                try:
                    entry = await nodes.get("n-beats")
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
            return entry.value or b""
        finally:
            await js.delete_key_value(bucket)
            await nc.close()

    assert protocol.NodeInfo.decode(asyncio.run(scenario())).id == "n-beats"
    assert heartbeat.BEAT_TIMEOUT_S < protocol.NODE_TTL_S / 2


def _executor_start(
    url: str, open_caller: Callable[[NATS, str | None], Awaitable[None]]
) -> BaseException:
    """Run an executor process's start-up in this process on one end of a socket pair;
    the error it ended with."""

    async def start() -> BaseException:
        ours, theirs = socket.socketpair()
        try:
            await executor_main._main(theirs.detach(), url, "n-start", open_caller, None)
        except BaseException as exc:
            return exc
        finally:
            ours.close()
        raise AssertionError("the executor started")

    return asyncio.run(start())


def test_an_executor_that_cannot_start_closes_its_connection(lattice: Lattice) -> None:
    given: list[NATS] = []

    async def broken_opener(nc: NATS, me: str | None) -> None:
        given.append(nc)
        raise RuntimeError("the caller side cannot open")

    error = _executor_start(lattice.url, broken_opener)
    assert isinstance(error, RuntimeError)
    assert len(given) == 1, "a failure other than the lattice's is not tried again"
    assert given[0].is_closed


def test_an_executor_started_during_an_election_tries_again(lattice: Lattice) -> None:
    """Opening the caller side looks up every asset: while a stream has no leader that
    fails with LatticeError, and the executor tries again instead of exiting."""
    given: list[NATS] = []

    async def opener(nc: NATS, me: str | None) -> None:
        given.append(nc)
        if len(given) <= 2:
            raise LatticeError("JetStream is not available on the lattice: nats: timeout")
        raise RuntimeError("third try: stop the test here")

    error = _executor_start(lattice.url, opener)
    assert isinstance(error, RuntimeError), error
    assert len(given) == 3
    assert given[0].is_closed


def test_a_bundle_fetch_from_a_store_that_never_answers_gives_up_after_its_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server without JetStream stands in for a bundles stream with no leader: every
    request goes unanswered. The fetch tries again until ``within_s`` has passed, then
    raises the store's own error."""
    port = free_port()
    server = subprocess.Popen(
        [find_nats_server(), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def fetch() -> None:
        nc = await connect(f"nats://127.0.0.1:{port}", name="test-fetch")
        try:
            await store.materialize(nc, "ab" * 32, tmp_path, within_s=0.3)
        finally:
            await nc.close()

    try:
        with caplog.at_level(logging.WARNING, "superpose.code"), pytest.raises(store.UNAVAILABLE):
            asyncio.run(fetch())
    finally:
        server.terminate()
        server.wait()
    warnings = [r for r in caplog.records if "the store is unavailable" in r.getMessage()]
    assert len(warnings) == 1, "tried again, with one warning per outage"
    assert not (tmp_path / ("ab" * 32)).exists()


def test_a_bundle_the_store_does_not_have_is_not_fetched_again(
    lattice: Lattice, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def fetch() -> None:
        nc = await connect(lattice.url, name="test-fetch")
        try:
            await store.materialize(nc, "cd" * 32, tmp_path, within_s=60)
        finally:
            await nc.close()

    with caplog.at_level(logging.WARNING, "superpose.code"), pytest.raises(NotFoundError):
        asyncio.run(fetch())
    assert not [r for r in caplog.records if "the store is unavailable" in r.getMessage()]
