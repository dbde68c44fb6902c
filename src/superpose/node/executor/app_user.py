"""The executor's connection as its *app user*: the NATS user its agent mints at ``Load``.

An executor's own user is minted while it is neutral and may touch no app's dicts,
queues or cache entries and take no express calls. The agent hands it a second user's
creds in the ``Load`` frame, tagged with the bundle's host key and its app
(``ExecutorSigner.mint_app``). One connection of that user's serves both the express
subscription (``express.py``) and the app-scoped state user code reaches through
``runtime.NodeRuntime.app_connection``. It is opened in the background, so loading does
not wait for it; whoever needs it first waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS

from superpose.errors import LatticeError

OPENING_WAIT_S = 5.0
"""How long closing waits for the connection being opened (a connect normally takes
milliseconds; a server that never answers is given up on)."""

ConnectAs = Callable[[str], Awaitable[NATS]]
"""A connection to the lattice as the user whose creds text is given."""


class AppConnection:
    """At most one connection as the app user, opened by ``open`` and closed by ``close``."""

    def __init__(self, connect_as: ConnectAs | None) -> None:
        self._connect_as = connect_as
        self._opening: asyncio.Task[NATS] | None = None

    def open(self, creds: str) -> bool:
        """Start connecting as the user of ``creds`` (no-op without creds, or without a way
        to connect); whether there is now an app connection to wait for."""
        if creds and self._connect_as is not None and self._opening is None:
            self._opening = asyncio.ensure_future(self._connect_as(creds))
        return self._opening is not None

    @property
    def opened(self) -> bool:
        return self._opening is not None

    async def get(self) -> NATS:
        """The connection, once it is up; a LatticeError saying why if it could not be
        opened (the server refused the user, the lattice is gone)."""
        if self._opening is None:
            raise LatticeError("this executor has no app user (its Load carried no creds)")
        try:
            return await asyncio.shield(self._opening)
        except asyncio.CancelledError:
            if self._opening.cancelled():
                raise LatticeError("this executor's app connection was closed") from None
            raise
        except Exception as exc:
            raise LatticeError(f"this executor's app user could not connect: {exc}") from exc

    async def close(self) -> None:
        opening, self._opening = self._opening, None
        if opening is None:
            return
        if not opening.done():
            # Let a connect under way finish, then close it: cancelled halfway, nats-py
            # leaves its socket open for the garbage collector.
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(opening), OPENING_WAIT_S)
        if not opening.done():
            opening.cancel()
        with contextlib.suppress(BaseException):
            nc = await opening
            await nc.close()
