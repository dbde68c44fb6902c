"""Placement asked of a node agent by an executor (``client/asked_placement.py``): the
executor's own NATS user may not watch the nodes bucket, make a work consumer or write
the registry, so its nested calls with needs ask here which nodes meet them, and a
durable one has the node open its needs class (consumer and ``place.<class>`` record,
as ``Placement.open_class`` and the scheduler do)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from superpose import protocol
from superpose.errors import NoNodesError, SuperposeError, UserError
from superpose.lattice.connection import ensure_work_consumer
from superpose.registry.mirror import Registry
from superpose.registry.placement import NodeDirectory, check_needs


class PlaceAnswers:
    """Answers ``sp.place`` from the node's own nodes mirror, each in a task of its own
    (a wait for a node must not hold up the next question)."""

    def __init__(
        self,
        nc: NATS,
        directory: NodeDirectory,
        registry: Registry,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._nc = nc
        self._directory = directory
        self._registry = registry
        self._spawn = spawn
        self._opened: set[str] = set()
        """Needs classes this node has opened already."""

    async def on_place(self, msg: Msg) -> None:
        if msg.reply:
            self._spawn(self._answer(msg))

    async def _answer(self, msg: Msg) -> None:
        answer = await self.place(msg.data)
        with contextlib.suppress(Exception):  # the asker gone: nothing to tell
            await msg.respond(answer.encode())

    async def place(self, data: bytes) -> protocol.Placed:
        try:
            request = protocol.PlaceRequest.decode(data)
            needs = check_needs(request.needs)
            nodes = await self._directory.wait_for(needs, request.wait_s, request.what)
            if request.durable:
                await self._open_class(needs)
        except protocol.ProtocolError as exc:
            return protocol.Placed(error_kind="bad_request", error=str(exc))
        except NoNodesError as exc:
            return protocol.Placed(error_kind="no_nodes", error=exc.message)
        except UserError as exc:
            return protocol.Placed(error_kind="bad_request", error=exc.message)
        except (SuperposeError, OSError) as exc:
            return protocol.Placed(error_kind="internal", error=str(exc))
        return protocol.Placed(nodes=nodes)

    async def _open_class(self, needs: dict[str, str]) -> None:
        cls = protocol.needs_class(needs)
        if cls not in self._opened:
            await ensure_work_consumer(
                self._nc, protocol.placed_consumer(cls), protocol.placed_filter(cls)
            )
            await self._registry.record_placement(cls, needs)
            self._opened.add(cls)
