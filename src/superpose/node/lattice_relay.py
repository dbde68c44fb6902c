"""The node's side of the one way out of a ``bwrap`` executor's network namespace.

A ``--sandbox bwrap`` executor has a network namespace of its own (a loopback and
nothing else), so it cannot open a TCP connection to anything. The node listens on a
unix socket in a folder it bind-mounts into the sandbox; each connection to it is
spliced to a new TCP connection to the lattice's NATS server, byte for byte. The
bytes are NATS protocol: TLS and credentials stay end to end between the executor
and the server, and the relay can neither read nor forge them. The executor's half
is ``node/executor/relay.py`` (nats-py dials TCP, so it listens on its own loopback).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from superpose.config import lattice_servers
from superpose.errors import UserError
from superpose.support.splice import CHUNK, splice

log = logging.getLogger("superpose.node")

SOCKET_NAME = "lattice.sock"
INSIDE_FOLDER = "/run/superpose"
"""Where a sandboxed executor sees the relay's folder (read-only)."""
INSIDE_SOCKET = f"{INSIDE_FOLDER}/{SOCKET_NAME}"
DIAL_TIMEOUT_S = 5.0
DEFAULT_PORT = 4222
"""NATS's port, when a lattice URL names none."""


def server_addresses(lattice: str) -> list[tuple[str, int]]:
    """The (host, port) of each server of a lattice URL, in the order given."""
    found = []
    for server in lattice_servers(lattice):
        parts = urlsplit(server)
        if parts.scheme in ("ws", "wss"):
            raise UserError(
                f"--sandbox bwrap: lattice {lattice!r} is a websocket URL; the sandbox "
                "relays NATS over TCP only (use a nats:// or tls:// URL, or --sandbox user)"
            )
        found.append((parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT))
    return found


class LatticeRelay:
    """One per node: a unix socket whose every connection is a TCP connection to the
    lattice. The folder (0755) and socket (0666) let any executor uid connect; they
    may all reach the lattice anyway, and what they may do there is up to their
    credentials."""

    def __init__(self, folder: Path, servers: list[tuple[str, int]]) -> None:
        self.folder = folder
        self.servers = servers
        self._server: asyncio.AbstractServer | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._ends: set[asyncio.StreamWriter] = set()
        """Both ends of every relayed connection, to cut them at ``close``."""

    @property
    def path(self) -> Path:
        return self.folder / SOCKET_NAME

    @classmethod
    async def open(cls, folder: Path, lattice: str) -> LatticeRelay:
        relay = cls(folder, server_addresses(lattice))
        shutil.rmtree(folder, ignore_errors=True)  # a socket left by a node that died
        folder.mkdir(parents=True, mode=0o755)
        folder.chmod(0o755)
        relay._server = await asyncio.start_unix_server(relay._serve, path=str(relay.path))
        relay.path.chmod(0o666)
        return relay

    async def _serve(self, inner_r: asyncio.StreamReader, inner_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pumps.add(task)
        self._ends.add(inner_w)
        try:
            dialed = await self._dial()
            if dialed is None:
                return
            outer_r, outer_w = dialed
            self._ends.add(outer_w)
            try:
                await splice(inner_r, inner_w, outer_r, outer_w)
            finally:
                outer_w.close()
                self._ends.discard(outer_w)
        finally:
            inner_w.close()
            self._ends.discard(inner_w)
            self._pumps.discard(task)

    async def _dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A TCP connection to the first server that answers (nats-py would fail over
        the same way); None if none does: the executor sees its connection close."""
        for host, port in self.servers:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=CHUNK), DIAL_TIMEOUT_S
                )
            except (OSError, TimeoutError) as exc:
                log.warning(
                    "sandbox relay: cannot reach the lattice at %s:%s (%s)", host, port, exc
                )
        return None

    async def close(self) -> None:
        """Stop listening, cut every relayed connection, remove the folder."""
        if self._server is not None:
            self._server.close()
        for end in list(self._ends):  # the pumps then end on their own (not cancelled:
            end.transport.abort()  # asyncio's server would log a cancelled handler)
        await asyncio.gather(*self._pumps, return_exceptions=True)
        shutil.rmtree(self.folder, ignore_errors=True)
