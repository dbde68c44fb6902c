"""The executor's half of the lattice relay of a ``bwrap`` sandbox (the node's half:
``node/lattice_relay.py``).

Inside its own network namespace the executor has a loopback and a unix socket the
node listens on, and nothing else. nats-py dials TCP only, so before any user code
is imported this starts a listener on ``127.0.0.1:<free port>`` of that loopback, in
a thread with an event loop of its own (a sync function holding the executor's loop
must not stall its own nested calls), which splices each connection to the node's
socket; the executor, its app user and every nested call connect to it. It ends
with the process: nothing of it can outlive the executor.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

from superpose.support.splice import CHUNK, splice


def start(node_socket: str) -> int:
    """Listen on a free loopback port, relaying to ``node_socket``; the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    port: int = listener.getsockname()[1]
    threading.Thread(
        target=_run, args=(listener, node_socket), name="lattice-relay", daemon=True
    ).start()
    return port


def _run(listener: socket.socket, node_socket: str) -> None:
    asyncio.run(_serve(listener, node_socket))


async def _serve(listener: socket.socket, node_socket: str) -> None:
    async def one(inner_r: asyncio.StreamReader, inner_w: asyncio.StreamWriter) -> None:
        try:
            outer_r, outer_w = await asyncio.open_unix_connection(node_socket, limit=CHUNK)
        except OSError:
            inner_w.close()  # the node is gone: nats-py sees the connection close
            return
        try:
            await splice(inner_r, inner_w, outer_r, outer_w)
        finally:
            inner_w.close()
            outer_w.close()

    server = await asyncio.start_server(one, sock=listener, limit=CHUNK)
    await server.serve_forever()


def relayed_url(lattice: str, port: int) -> tuple[str, str]:
    """The lattice URL through the relay (its first server's scheme, on the relay's
    port), and the host name a TLS certificate must still be checked against."""
    first = urlsplit(lattice.split(",")[0])
    user = first.netloc.rpartition("@")[0]  # user:password in the URL, if any
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urlunsplit((first.scheme, netloc, "", "", "")), first.hostname or ""
