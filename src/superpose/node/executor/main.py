"""The executor process's entry: connect, open the caller side, serve the agent's socket.

A node agent starts it neutral (``cli/executor.py`` composes it); ``runner.py``
is the executor itself.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import socket
import uuid

from superpose import protocol, runtime
from superpose.lattice.connection import connect
from superpose.lattice.offers import Offers
from superpose.node.channel import Channel
from superpose.node.executor.runner import Executor
from superpose.support import eventloop


async def _main(fd: int, lattice: str, node_id: str, open_caller: runtime.CallerOpener) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    nc = await connect(lattice, name=f"superpose-executor-{node_id}-{os.getpid()}")
    # While still neutral: opening the client user code calls through (asset lookups,
    # its subscriptions) cost 35-55 ms, which a bundle's first call would otherwise wait for.
    await open_caller(nc)
    offered = Offers(nc, uuid.uuid4().hex[:16])
    await nc.subscribe(
        offered.subject, cb=offered.serve, pending_msgs_limit=-1, pending_bytes_limit=-1
    )
    channel = Channel(reader, writer, protocol.decode_from_agent)
    executor = Executor(nc, channel, node_id, offered)
    try:
        await executor.serve()
    finally:
        await nc.close()
        executor.channel.close()


def serve_forever(fd: int, lattice: str, node_id: str, open_caller: runtime.CallerOpener) -> None:
    """Be an executor on the agent's socket ``fd`` until the agent closes it; never returns.

    ``open_caller`` opens the client that user code's nested calls go through.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when executors stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A fatal signal's Python stack (of the thread it hit) goes to the crash report.
    faulthandler.enable(all_threads=False)
    eventloop.run(_main(fd, lattice, node_id, open_caller))
    os._exit(0)  # worker threads of abandoned calls must not keep the process alive
