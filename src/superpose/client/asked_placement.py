"""An executor's placement: asked of the node agents, never read from the lattice.

An executor's own NATS user may not watch the nodes bucket, make the work consumer of
a needs class, nor write its ``place.<class>`` registry key
(``security/executor_identity.py``). So a nested call with needs asks a node agent
over ``sp.place`` (``node/placing.py``), which answers from its own nodes mirror and,
for durable work, opens the class itself. The choice among the nodes answered (warm
first, then the least busy) stays the caller's, as in ``Placement``.
"""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from superpose import protocol
from superpose.client.placement import Pins, Placement
from superpose.errors import BadRequestError, LatticeError, NoNodesError

ASK_MARGIN_S = 5.0
"""How much longer than the node's own wait for a node the question may take."""
_ERRORS = {"no_nodes": NoNodesError, "bad_request": BadRequestError}


class AskedPlacement(Placement):
    def __init__(self, nc: NATS, nodes: KeyValue, names: Pins) -> None:
        super().__init__(nc, nodes, names)
        self._asker = nc

    async def open_class(self, inv: protocol.Invocation, wait_s: float) -> None:
        """As ``Placement.open_class``, done by a node: a node meets the needs, and the
        class's consumer and record exist."""
        if inv.needs is not None:
            await self._ask(inv, wait_s, durable=True)

    async def _candidates(self, inv: protocol.Invocation, wait_s: float) -> list[protocol.NodeInfo]:
        return await self._ask(inv, wait_s, durable=False)

    async def _ask(
        self, inv: protocol.Invocation, wait_s: float, *, durable: bool
    ) -> list[protocol.NodeInfo]:
        what = f"{inv.app}.{inv.fn}"
        request = protocol.PlaceRequest(dict(inv.needs or {}), what, wait_s, durable)
        try:
            msg = await self._asker.request(
                protocol.PLACE_SUBJECT, request.encode(), timeout=wait_s + ASK_MARGIN_S
            )
            placed = protocol.Placed.decode(msg.data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise LatticeError(
                f"no node answered where {what} may run ({type(exc).__name__}); is a node "
                "of this lattice running?"
            ) from exc
        except protocol.ProtocolError as exc:
            raise LatticeError(f"a node's answer on placing {what}: {exc}") from exc
        if placed.error_kind:
            error = _ERRORS.get(placed.error_kind)
            if error is None:
                raise LatticeError(f"the node could not place {what}: {placed.error}")
            raise error(placed.error)
        return placed.nodes
