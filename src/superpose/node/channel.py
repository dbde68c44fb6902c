"""Length-prefixed msgpack frames between a node agent and its executors."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

_HEADER = struct.Struct(">I")


class Channel:
    """One socket, frames in both directions.

    ``send`` never waits for the peer, and frames sent in one loop iteration
    leave in one write: a busy node sends hundreds per iteration, and a
    syscall each was the executor's largest cost.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._outgoing: list[bytes] = []

    def send(self, message: dict[str, Any], *, now: bool = False) -> None:
        """Queue a frame for the end of this loop iteration, or, ``now``, write it (and
        any queued before it) before returning: for a frame that must reach the peer
        even if this process dies the next moment."""
        body = msgpack.packb(message, use_bin_type=True)
        if not self._outgoing and not now:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(_HEADER.pack(len(body)) + body)
        if now:
            self._flush()

    def _flush(self) -> None:
        frames, self._outgoing = self._outgoing, []
        if frames and not self.writer.is_closing():
            self.writer.write(b"".join(frames))

    async def receive(self) -> dict[str, Any] | None:
        """The next frame, or None once the peer has gone."""
        try:
            header = await self.reader.readexactly(_HEADER.size)
            body = await self.reader.readexactly(_HEADER.unpack(header)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        message = msgpack.unpackb(body, raw=False)
        assert isinstance(message, dict)
        return message

    def close(self) -> None:
        if self._outgoing:
            self._flush()
        self.writer.close()
