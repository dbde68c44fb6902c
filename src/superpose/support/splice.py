"""Two byte streams joined: what one side sends, the other reads, until either ends.

The lattice relay of a ``bwrap`` sandbox is two of these in a row (the executor's
loopback to the node's unix socket, that socket to NATS's TCP port).
"""

from __future__ import annotations

import asyncio
import contextlib

CHUNK = 256 * 1024
"""Bytes read at a time: a 1 MB argument crosses in four reads."""


async def splice(
    a_r: asyncio.StreamReader,
    a_w: asyncio.StreamWriter,
    b_r: asyncio.StreamReader,
    b_w: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until either side ends; then both are ended."""
    one = asyncio.ensure_future(pump(a_r, b_w))
    other = asyncio.ensure_future(pump(b_r, a_w))
    try:
        await asyncio.wait((one, other), return_when=asyncio.FIRST_COMPLETED)
    finally:
        one.cancel()
        other.cancel()
        await asyncio.gather(one, other, return_exceptions=True)


async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy ``source`` to ``sink`` until ``source`` ends or either side breaks."""
    with contextlib.suppress(OSError):
        while chunk := await source.read(CHUNK):
            sink.write(chunk)
            await sink.drain()
