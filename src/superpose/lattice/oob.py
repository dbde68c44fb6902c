"""Pickles whose big buffers travel beside the stream (pickle protocol 5, out of band).

A 50 MB ``bytes`` argument pickled in band is copied into the stream, and the
stream is then scanned for the names of modules the receiver lacks
(``payload._pickle``): two passes over 50 MB before a byte moves (60-90 ms
here). Out of band, the stream holds only the small rest of the value and the
big buffers are copied once, to where they go (``Frame``); the scan reads the
stream only. The
reader hands pickle views of the buffers where they lie (a shared-memory
mapping, a pulled buffer), so a ``bytes`` is copied once, out of them.

The frame: ``MAGIC``, the counts, the stream, then each buffer. A plain pickle
starts with the PROTO opcode (0x80), never with ``MAGIC``, so both decode.
``bytes`` of at least ``MIN_OOB_BYTES`` go out of band when they lie near the
value's top (an argument, a list's item): finding deeper ones would cost a
walk of every value.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

import cloudpickle

from superpose.config import SPILL_THRESHOLD_BYTES

MAGIC = b"SPB1"
MIN_OOB_BYTES = 64 * 1024
"""Smaller buffers stay in band: a separate buffer costs more than its copy."""
_HEAD = struct.Struct("<4sII")  # magic, buffer count, stream length
_ENTRY = struct.Struct("<QB")  # buffer length, kind
_BYTES, _OTHER = 0, 1
"""Kinds: a ``bytes`` gets a view (its rebuild copies it out); any other buffer
(bytearray, numpy) a copy of its own, writable as an in-band pickle would give it.
No value keeps a view: the mapping it lies in may be reused once read."""
MAX_DEPTH = 3
"""Levels of containers looked into: a call's (args, kwargs), an argument, its items."""
MAX_LOOK = 64
MAX_VISITS = 256
"""Lists, tuples and dicts longer than this are not looked into for big bytes."""


def _bytes_from(buffer: Any) -> bytes:
    return bytes(buffer)


class _OutOfBand:
    """Stands for a big ``bytes`` in the value pickled: the C pickler writes every
    ``bytes`` in band and asks no override about them, so the value's big ones are
    swapped for this first (bytearray and numpy go out of band by themselves)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return _bytes_from, (pickle.PickleBuffer(self.data),)


def dumps(value: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """The stream of ``value`` and its out-of-band buffers (raises as ``pickle.dumps``)."""
    buffers: list[pickle.PickleBuffer] = []
    value = _swapped(value, 0, {})
    return pickle.dumps(value, protocol=5, buffer_callback=buffers.append), buffers


def _swapped(value: Any, depth: int, seen: dict[int, Any]) -> Any:
    """``value`` with its big ``bytes`` near the top (lists, tuples and
    dicts' values, ``MAX_DEPTH``) swapped for ``_OutOfBand``; containers with none are kept as they
    are, and one rebuilt container stands for its original everywhere (``seen``)."""
    kind = type(value)
    if kind is bytes:
        if len(value) < MIN_OOB_BYTES:
            return value
        if id(value) not in seen:  # one buffer however often it appears
            seen[id(value)] = _OutOfBand(value)
        return seen[id(value)]
    if depth >= MAX_DEPTH or kind not in (tuple, list, dict) or not 0 < len(value) <= MAX_LOOK:
        return value
    if id(value) in seen:
        return seen[id(value)]
    if len(seen) >= MAX_VISITS:  # a warm call's small arguments must stay cheap
        return value
    if kind is dict:
        items = {k: _swapped(v, depth + 1, seen) for k, v in value.items()}
        changed = any(items[k] is not v for k, v in value.items())
        new: Any = items if changed else value
    else:
        parts = [_swapped(v, depth + 1, seen) for v in value]
        changed = any(p is not v for p, v in zip(parts, value, strict=True))
        new = (parts if kind is list else tuple(parts)) if changed else value
    seen[id(value)] = new
    return new


class Frame:
    """A framed pickle too big to join: its parts are copied once, straight to where
    they go (a shared-memory file), and joined only if something needs one ``bytes``
    (a pull over NATS, the object store)."""

    __slots__ = ("_joined", "parts", "size")

    def __init__(self, parts: list[bytes | memoryview]) -> None:
        self.parts = parts
        self.size = sum(memoryview(part).nbytes for part in parts)
        self._joined: bytes | None = None

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.join()

    def join(self) -> bytes:
        if self._joined is None:
            self._joined = b"".join(self.parts)
            self.parts = [self._joined]
        return self._joined


Encoded = bytes | Frame
"""An encoded value or call's arguments: ``bytes``, or a big framed pickle's parts."""


def as_bytes(data: Encoded) -> bytes:
    return data if isinstance(data, bytes) else data.join()


def parts_of(data: Encoded | bytearray | memoryview) -> list[bytes | memoryview]:
    if isinstance(data, Frame):
        return data.parts
    return [data if isinstance(data, bytes) else memoryview(data)]


def frame(stream: bytes, buffers: list[pickle.PickleBuffer]) -> Encoded:
    """The frame's head, the stream and the buffers: one ``bytes`` when small, else a
    ``Frame`` of them not yet copied."""
    views = [buffer.raw() for buffer in buffers]
    head = [_HEAD.pack(MAGIC, len(views), len(stream))]
    for view in views:
        head.append(_ENTRY.pack(view.nbytes, _BYTES if type(view.obj) is bytes else _OTHER))
    # A bytes cannot change; a bytearray or an array could, after ``spawn`` returned
    # and before its arguments are sent: those are copied now, as pickling in band did.
    kept = [view if type(view.obj) is bytes else view.tobytes() for view in views]
    parts: list[bytes | memoryview] = [b"".join(head), stream, *kept]
    if sum(view.nbytes for view in views) <= SPILL_THRESHOLD_BYTES:
        return b"".join(parts)
    return Frame(parts)


def is_framed(data: Any) -> bool:
    return len(data) >= _HEAD.size and bytes(data[:4]) == MAGIC


def loads(data: bytes | bytearray | memoryview) -> Any:
    """A framed pickle's value: its buffers are views of ``data`` (no copy here)."""
    view = memoryview(data)
    magic, count, stream_len = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise pickle.UnpicklingError("not a framed pickle")
    offset = _HEAD.size
    entries = []
    for _ in range(count):
        entries.append(_ENTRY.unpack_from(view, offset))
        offset += _ENTRY.size
    stream = view[offset : offset + stream_len]
    offset += stream_len
    buffers: list[Any] = []
    for length, kind in entries:
        part = view[offset : offset + length]
        buffers.append(part if kind == _BYTES else bytearray(part))
        offset += length
    if offset != len(view):
        raise pickle.UnpicklingError(
            f"a framed pickle of {len(view)} bytes names {offset}: truncated or padded"
        )
    return cloudpickle.loads(stream, buffers=buffers)
