"""Length-prefixed msgpack frames between a node agent and its executors."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Generic, TypeVar

from superpose import protocol

_HEADER = struct.Struct(">I")
LAZY_S = 0.002
"""How long a ``lazy`` frame may wait for company before it is written alone."""

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
        self._flushing: asyncio.Handle | asyncio.TimerHandle | None = None
        self._soon = False
        """The flush scheduled is this iteration's (else ``LAZY_S`` away, or none)."""

    def send(self, frame: protocol.Frame, *, now: bool = False, lazy: bool = False) -> None:
        """Queue a frame for the end of this loop iteration, or, ``now``, write it (and
        any queued before it) before returning: for a frame that must reach the peer
        even if this process dies the next moment. ``lazy``: it may wait ``LAZY_S`` for
        the next frame to leave with it (each write wakes the peer: a frame the peer
        needs soon, not now, should not cost it a wake-up of its own)."""
        body = protocol.encode_frame(frame)
        self._outgoing += _HEADER.pack(len(body))
        self._outgoing += body
        if now:
            self._flush()
        elif not lazy and not self._soon:
            if self._flushing is not None:
                self._flushing.cancel()
            self._flushing = asyncio.get_running_loop().call_soon(self._flush)
            self._soon = True
        elif self._flushing is None:
            self._flushing = asyncio.get_running_loop().call_later(LAZY_S, self._flush)

    def _flush(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
        self._flushing, self._soon = None, False
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
