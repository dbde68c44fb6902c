"""The executor process's entry: connect, open the caller side, serve the agent's socket.

A node agent starts it neutral (``cli/executor.py`` composes it); ``runner.py``
is the executor itself.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import socket
import uuid
from collections.abc import Awaitable

from nats.aio.client import Client as NATS

from superpose import protocol, runtime
from superpose.errors import LatticeError
from superpose.lattice.connection import connect
from superpose.lattice.offers import Offers
from superpose.node.channel import Channel
from superpose.node.executor.app_user import ConnectAs
from superpose.node.executor.runner import Executor
from superpose.security.executor_identity import ExecutorCreds
from superpose.support import eventloop
from superpose.support.retry import THROUGH_ELECTION, retry

log = logging.getLogger("superpose.executor")

OPEN_RETRY = THROUGH_ELECTION
"""Between tries to open the caller side. Opening it looks up every JetStream asset,
and a stream whose server just died has no leader for the 4-9 s NATS's Raft takes to
elect one: an executor started meanwhile tries again soon after, rather than exiting
and leaving the call that wanted it to fail."""
OPEN_WITHIN_S = 20.0
"""How long it keeps trying: several elections, and under the agent's 30 s wait for
an executor to start (``executor_process.START_TIMEOUT_S``)."""

AgentChannel = Channel[protocol.FromAgent]


async def _main(
    fd: int,
    lattice: str,
    node_id: str,
    open_caller: runtime.CallerOpener,
    creds: ExecutorCreds | None,
) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    channel = Channel(reader, writer, protocol.decode_from_agent)
    me = creds.executor_id if creds is not None else None
    try:
        nc = await connect(
            lattice,
            name=f"superpose-executor-{node_id}-{os.getpid()}",
            creds=creds.path if creds is not None else None,
            inbox_prefix=protocol.executor_inbox_prefix(me) if me is not None else None,
        )
        try:
            await _serve(nc, channel, node_id, open_caller, me, _connect_as(lattice, node_id, me))
        finally:  # on every path: a connection left to the collector warns, or worse
            await nc.close()
    finally:
        channel.close()


async def _serve(
    nc: NATS,
    channel: AgentChannel,
    node_id: str,
    open_caller: runtime.CallerOpener,
    me: str | None,
    connect_as: ConnectAs | None = None,
) -> None:
    # While still neutral: opening the client user code calls through (asset lookups,
    # its subscriptions) cost 35-55 ms, which a bundle's first call would otherwise wait for.
    await retry(
        lambda: open_caller(nc, me),
        backoff=OPEN_RETRY,
        within_s=OPEN_WITHIN_S,
        retry_on=LatticeError,
        on_failure=_open_failed,
    )
    owner = protocol.executor_offers_owner(me) if me is not None else uuid.uuid4().hex[:16]
    offered = Offers(nc, owner)
    await nc.subscribe(
        offered.subject, cb=offered.serve, pending_msgs_limit=-1, pending_bytes_limit=-1
    )
    try:
        await Executor(nc, channel, node_id, offered, connect_as).serve()
    finally:  # it ends with os._exit: no one else unlinks its shared-memory files
        offered.close()


def _connect_as(lattice: str, node_id: str, me: str | None) -> ConnectAs:
    """How the executor connects as its app user (``app_user.py``), with the creds
    text its agent hands it: from memory, under the same name and inbox prefix."""

    def connect_as(creds: str) -> Awaitable[NATS]:
        return connect(
            lattice,
            name=f"superpose-app-{node_id}-{os.getpid()}",
            creds_text=creds,
            inbox_prefix=protocol.executor_inbox_prefix(me) if me is not None else None,
        )

    return connect_as


def _open_failed(error: BaseException, failures: int) -> None:
    if failures == 1:  # once per start: an election fails a try every half second
        log.warning("cannot open the lattice's assets yet (%s); retrying", error)


def serve_forever(
    fd: int,
    lattice: str,
    node_id: str,
    open_caller: runtime.CallerOpener,
    creds: ExecutorCreds | None = None,
) -> None:
    """Be an executor on the agent's socket ``fd`` until the agent closes it; never returns.

    ``open_caller`` opens the client that user code's nested calls go through;
    ``creds``: the executor's own NATS user (None: the creds lookup finds).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when executors stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A fatal signal's Python stack (of the thread it hit) goes to the crash report.
    faulthandler.enable(all_threads=False)
    eventloop.run(_main(fd, lattice, node_id, open_caller, creds))
    os._exit(0)  # worker threads of abandoned calls must not keep the process alive
