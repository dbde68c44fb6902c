"""Names to versions: the client's registry mirror and the context a call carries.

Which version answers a call is decided where the call is made, from a mirror
of the registry bucket started on first use; the session and pins the call
carries make a whole call graph resolve alike (see "Routing and placement" in
docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nats.js.kv import KeyValue

from superpose import protocol, runtime
from superpose.client.options import Options
from superpose.client.threads import run
from superpose.errors import SuperposeError
from superpose.lattice import signing
from superpose.registry.mirror import Registry, Target, session_from
from superpose.registry.trust import TrustedKeys
from superpose.support.eventloop import on_loop


class Names:
    def __init__(
        self,
        kv: KeyValue | None,
        loop: asyncio.AbstractEventLoop,
        trust: KeyValue | None,
        signer: Callable[[], signing.Signer],
        url: str,
    ) -> None:
        self._kv = kv
        """None in an executor, whose user may not read the registry (``asked_names.py``)."""
        self._trust = trust
        self._signer = signer
        self._url = url
        self._loop = loop
        self._mirror: Registry | None = None

    async def registry(self) -> Registry:
        """The mirror, with the trusted keys that judge it and the key writes sign with."""
        if self._mirror is None:
            if self._kv is None or self._trust is None:
                raise SuperposeError(
                    "code running on a node cannot read the lattice's registry; call "
                    "functions by name (client.function('app.fn')) instead"
                )
            mirror = Registry(self._kv, trust=TrustedKeys(self._trust))
            mirror.signer, mirror.lattice = self._signer, self._url
            await mirror.start()
            self._mirror = mirror
        return self._mirror

    async def stop(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()

    def resolve(
        self,
        app: str,
        fn: str,
        version: str | None = None,
        ctx: protocol.CallContext | None = None,
    ) -> Target:
        """The version a call runs (see ``Registry.pick`` for the rules), from the mirror."""
        registry = self._mirror
        if registry is None:
            registry = run(self._loop, self.registry()) if not on_loop(self._loop) else None
            if registry is None:
                raise SuperposeError("call `await client.registry()` before resolving on the loop")
        invocation = runtime.current_invocation.get()
        caller = invocation.app if invocation is not None else None
        return registry.resolve(app, fn, version, ctx, caller)

    def environment(self, digest: str) -> protocol.Environment | None:
        """A recorded environment, as far as the mirror knows (None before it starts)."""
        return self._mirror.environments.get(digest) if self._mirror is not None else None

    def pin(self, app: str, fn: str) -> str | None:
        """The node ``app.fn`` is pinned to, as far as the mirror knows. It is not started
        for this: a script-mode call needs no registry, and the mirror costs a watch."""
        if self._mirror is None:
            return None
        return self._mirror.pins.get(app, {}).get(fn)

    def call_context(
        self,
        options: Options,
        app: str | None = None,
        kwargs: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        fn: str | None = None,
        args: Sequence[Any] = (),
    ) -> protocol.CallContext:
        """The context a call carries: inherited from the call it is made in, with the
        session, pins and tracing this call asks for. An inherited session wins, so a
        whole call graph resolves versions for the session it began with."""
        ctx = runtime.child_context()
        if options.session is not None:
            ctx.session = options.session
        if options.pins:
            ctx.pins = {**(ctx.pins or {}), **options.pins}
        if options.trace:
            ctx.trace = True
        if ctx.session is None and app is not None and self._mirror is not None:
            canary = self._mirror.canaries.get(app)
            params = self._mirror.params_of(app, fn) if args and canary is not None else []
            ctx.session = session_from(canary, headers, kwargs, args, params)
        if ctx.trace and ctx.trace_id is None:
            ctx.trace_id = uuid.uuid4().hex[:16]
        return ctx
