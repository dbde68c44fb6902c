"""How a node rides out a failover (issue 18): a write or a heartbeat sent to a server
as it died is never answered, so each try is bounded and tried again soon; the
stream with no leader meanwhile refuses every try, and the first one it takes lands."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import cast

import pytest

from conftest import Lattice
from superpose import protocol
from superpose.lattice.connection import Assets, connect
from superpose.node import heartbeat, result_store
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
