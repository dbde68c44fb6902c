"""Length-prefixed msgpack frames between a node agent and its executors."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Generic, TypeVar

from superpose import protocol

_HEADER = struct.Struct(">I")

Incoming = TypeVar("Incoming")


class Channel(Generic[Incoming]):
    """One socket, typed frames in both directions (``protocol.Frame``s).

    ``send`` never waits for the peer, and frames sent in one loop iteration
    leave in one write: a busy node sends hundreds per iteration, and a
    syscall each was the executor's largest cost. ``receive`` gives the frames
    of the peer's direction, decoded by ``decode`` (``protocol.decode_from_agent``
    or ``protocol.decode_from_executor``).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decode: Callable[[bytes], Incoming],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._decode = decode
        self._outgoing = bytearray()

    def send(self, frame: protocol.Frame, *, now: bool = False) -> None:
        """Queue a frame for the end of this loop iteration, or, ``now``, write it (and
        any queued before it) before returning: for a frame that must reach the peer
        even if this process dies the next moment."""
        body = protocol.encode_frame(frame)
        if not self._outgoing and not now:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing += _HEADER.pack(len(body))
        self._outgoing += body
        if now:
            self._flush()

    def _flush(self) -> None:
        frames, self._outgoing = self._outgoing, bytearray()
        if frames and not self.writer.is_closing():
            self.writer.write(frames)

    async def receive(self) -> Incoming | None:
        """The next frame, or None once the peer has gone. A frame that does not
        decode raises ``protocol.ProtocolError`` (both ends are one installation:
        it is a bug, not a peer to tolerate)."""
        try:
            header = await self.reader.readexactly(_HEADER.size)
            body = await self.reader.readexactly(_HEADER.unpack(header)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return self._decode(body)

    def close(self) -> None:
        if self._outgoing:
            self._flush()
        self.writer.close()
