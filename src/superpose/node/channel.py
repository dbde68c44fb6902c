"""Length-prefixed msgpack frames between a node agent and its executors."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

_HEADER = struct.Struct(">I")


class Channel:
    """One socket, frames in both directions; ``send`` never waits for the peer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, message: dict[str, Any]) -> None:
        body = msgpack.packb(message, use_bin_type=True)
        self.writer.write(_HEADER.pack(len(body)) + body)

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
        self.writer.close()
