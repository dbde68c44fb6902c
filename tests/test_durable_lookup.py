"""A redelivered envelope's result lookup is asked until the lattice answers.

Running an item whose lookup failed would run it a second time whenever its first
node stored the result but the results stream was between leaders; the cluster soak
saw exactly that. Here the results stream is gone (a lookup fails at once, as with no
leader) while a DurableWorker takes a redelivered envelope: nothing runs until the
stream is back, then the item runs once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from conftest import bare_invocation, on_fresh_server
from superpose import protocol
from superpose.lattice.batch import publish_atomic
from superpose.lattice.connection import Assets, ensure_assets
from superpose.lattice.work import work_message
from superpose.node.admission import Request
from superpose.node.durable import DurableWorker


class Host:
    """The node around a DurableWorker, reduced to recording what it was asked to run."""

    def __init__(self, nc: NATS, assets: Assets) -> None:
        self.node_id = "n-lookup-test"
        self.nc = nc
        self.assets = assets
        self.accepted: list[str] = []

    def accept(self, inv: protocol.Invocation, work: Request) -> None:
        self.accepted.append(inv.id)

    def has_room(self) -> bool:
        return True

    def cancel(self, inv_id: str) -> list[str]:
        return []

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.get_running_loop().create_task(coro)


async def _scenario(nc: NATS) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    assets = await ensure_assets(nc)
    inv = bare_invocation("lookup-1", "0" * 64, "lookup_app", "f")
    await publish_atomic(nc, [work_message(inv, "env-1", [inv.encode()])])
    js = nc.jetstream()
    pull = await js.pull_subscribe_bind(protocol.WORK_CONSUMER, protocol.WORK_STREAM)
    (first,) = await pull.fetch(1, timeout=10)
    await first.nak()  # its node "died": the next delivery is a redelivery
    (again,) = await pull.fetch(1, timeout=10)
    seen["delivered"] = again.metadata.num_delivered
    await js.delete_stream(protocol.RESULTS_STREAM)

    host = Host(nc, assets)
    taking = asyncio.create_task(DurableWorker(host)._take(again))
    await asyncio.sleep(3)  # several failed lookups
    seen["while_unanswered"] = list(host.accepted)
    seen["still_taking"] = not taking.done()
    await ensure_assets(nc)  # the stream is back, empty: no stored result
    await asyncio.wait_for(taking, 30)
    seen["after"] = list(host.accepted)
    await pull.unsubscribe()
    return seen


def test_a_failed_lookup_is_asked_again_not_run(tmp_path: Path) -> None:
    seen = asyncio.run(on_fresh_server(tmp_path, _scenario))
    assert seen["delivered"] == 2
    assert seen["while_unanswered"] == [] and seen["still_taking"]
    assert seen["after"] == ["lookup-1"]
