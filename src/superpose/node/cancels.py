"""Cancelled invocation ids: every node hears them, and one that starts later knows too.

A cancel is told at once on ``sp.cancel`` and recorded in the cancels bucket,
which every node follows from its start, so work queued before a node joined
is never run by it after a cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg

from superpose import protocol
from superpose.lattice.mirror import follow_bucket
from superpose.node.link import Connected

log = logging.getLogger("superpose.node.durable")
CANCELS_LOAD_S = 5.0


class Cancellations:
    def __init__(self, link: Connected, on_cancel: Callable[[str], None]) -> None:
        self.link = link
        self._on_cancel = on_cancel
        """Called once per newly cancelled id."""
        self.ids: set[str] = set()

    def __contains__(self, inv_id: object) -> bool:
        return inv_id in self.ids

    async def start(self, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        """Hear cancels from now on, and load the ones made before (for a while at most:
        a lattice that does not answer must not keep the node from serving)."""
        await self.link.nc.subscribe(protocol.CANCEL_SUBJECT, cb=self._heard)
        loaded = asyncio.Event()
        spawn(self._follow(loaded))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loaded.wait(), CANCELS_LOAD_S)

    async def _follow(self, loaded: asyncio.Event) -> None:
        def seen(key: str, value: bytes | None, deleted: bool) -> None:
            if not deleted:
                self.add([key])

        await follow_bucket(self.link.assets.cancels, seen, loaded, "cancels")

    async def _heard(self, msg: Msg) -> None:
        try:
            cancel = protocol.Cancel.decode(msg.data)
        except protocol.ProtocolError:
            return
        self.add(cancel.ids)

    def add(self, ids: list[str]) -> None:
        for inv_id in ids:
            if inv_id not in self.ids:
                self.ids.add(inv_id)
                self._on_cancel(inv_id)
