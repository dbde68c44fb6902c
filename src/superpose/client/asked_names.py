"""An executor's names: asked of the node agents, never read from the registry.

An executor's own NATS user may not read the registry bucket
(``security/executor_identity.py``), so its client has no registry mirror. A nested
call by name (``client.function("app.fn")``) asks a node agent over
``sp.resolve``, which answers from its own mirror with the same rules (aliases,
canaries by the call's session, locks of the calling app, pins). Nothing is kept:
a moved alias or a new runtime-linked version must reach the very next nested call
(tests/test_routing.py), and the question costs one round trip to a node.

Calls of functions defined in the executor's own bundle never ask: they run the
hosted bundle (``functions.Function._target``).
"""

from __future__ import annotations

import asyncio

import nats.errors
from nats.aio.client import Client as NATS

from superpose import protocol, runtime
from superpose.client.names import Names
from superpose.client.threads import run
from superpose.errors import LatticeError, SuperposeError
from superpose.lattice import signing
from superpose.registry.asked import target_of
from superpose.registry.mirror import Target
from superpose.support.eventloop import on_loop

ASK_TIMEOUT_S = 5.0


def _no_signer() -> signing.Signer:
    raise SuperposeError("code running on a node signs no registry record")


class AskedNames(Names):
    def __init__(self, nc: NATS, loop: asyncio.AbstractEventLoop) -> None:
        # No buckets: ``registry()`` refuses, naming why; nodes judge signatures.
        super().__init__(None, loop, None, _no_signer, "")
        self._nc = nc

    def resolve(
        self,
        app: str,
        fn: str,
        version: str | None = None,
        ctx: protocol.CallContext | None = None,
    ) -> Target:
        """As ``Names.resolve``, answered by a node agent."""
        invocation = runtime.current_invocation.get()
        caller = invocation.app if invocation is not None else None
        request = protocol.ResolveRequest(app, fn, version, ctx, caller)
        if on_loop(self._loop):
            raise SuperposeError(
                f"resolving {app}.{fn} asks a node: call it from a thread, or with "
                "`await asyncio.to_thread(...)` in async code"
            )
        return run(self._loop, self._ask(request))

    async def _ask(self, request: protocol.ResolveRequest) -> Target:
        try:
            msg = await self._nc.request(
                protocol.RESOLVE_SUBJECT, request.encode(), timeout=ASK_TIMEOUT_S
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise LatticeError(
                f"no node answered which version {request.app}.{request.fn} is "
                f"({type(exc).__name__}); is a node of this lattice running?"
            ) from exc
        try:
            resolved = protocol.Resolved.decode(msg.data)
        except protocol.ProtocolError as exc:
            raise LatticeError(f"a node's answer to {request.app}.{request.fn}: {exc}") from exc
        return target_of(resolved)
