"""The gateway's HTTP server: uvicorn, with ``guard``'s protocol and enough file
descriptors for the connection cap.

A cap the process cannot reach is no cap: at the usual soft limit of 1,024 open
files, 1,000 connections plus the lattice's sockets would hit ``EMFILE`` first and
uvicorn would stop accepting anyone. So the soft limit is raised to what the cap
needs (never past the hard limit), and a cap beyond the hard limit is refused at
start-up, naming both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import uvicorn

from superpose.errors import UserError
from superpose.gateway.guard import protocol_with
from superpose.gateway.limits import Limits

SPARE_FDS = 256
"""Descriptors beyond the connection cap: the lattice's sockets, logs, and the
connections accepted only to be refused."""


def ensure_fds(limits: Limits) -> int:
    """Raise this process's soft open-files limit to what ``limits`` needs; that number.
    ``UserError`` when the hard limit is lower."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX: nothing to raise
        return 0
    needed = limits.max_connections + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UserError(
            f"--max-connections {limits.max_connections} needs {needed} open files, but this "
            f"process may open at most {hard}: lower --max-connections or raise `ulimit -Hn`"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


async def run(
    app: Any,
    host: str,
    port: int,
    limits: Limits,
    until: Coroutine[Any, Any, None] | None = None,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM or ``until`` returns; requests in flight finish."""
    ensure_fds(limits)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        http=protocol_with(limits),
    )
    server = uvicorn.Server(config)
    watch = None
    if until is not None:
        watch = asyncio.create_task(until)
        watch.add_done_callback(lambda _: setattr(server, "should_exit", True))
    try:
        await server.serve()
    finally:
        if watch is not None:
            watch.cancel()
