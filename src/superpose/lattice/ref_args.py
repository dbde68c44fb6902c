"""Refs among a call's arguments become their values before the function runs.

The node side decodes a call's arguments with ``decode_args``, which notes every Ref
the unpickling made (``refs.arriving``): a call without Refs costs nothing more. A
call with some has their bytes fetched at once, concurrently, through a ``RefCache``
(one per executor, so eight calls given the same Ref fetch it once), and each Ref
in lists, tuples and dicts, at any depth, is swapped for its value. A Ref inside
another kind of object stays a Ref (the function may ``sp.get`` it).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.lattice import payload
from superpose.lattice.refs import Ref, arriving, fetch

CACHE_BYTES = 256 * 1024 * 1024
"""Bytes of fetched objects an executor keeps for its next calls (least recently used
go first); an object bigger than this is fetched for each call."""
Args = tuple[tuple[Any, ...], dict[str, Any]]


def decode_args(
    data: protocol.Buffer, codec: str
) -> tuple[tuple[Any, ...], dict[str, Any], list[Ref]]:
    """``payload.decode_args``, and the Refs found in the arguments."""
    with arriving() as found:
        args, kwargs = payload.decode_args(data, codec)
    return args, kwargs, found


class RefCache:
    """Fetched objects by digest; a fetch under way is shared by everyone who asks."""

    def __init__(self, nc: NATS, max_bytes: int = CACHE_BYTES) -> None:
        self._nc = nc
        self._max_bytes = max_bytes
        self._fetches: OrderedDict[str, asyncio.Future[bytes | bytearray]] = OrderedDict()
        self._bytes = 0
        self.fetched = 0
        """Objects fetched from their holders so far (for tests and measurements)."""

    async def bytes_of(self, ref: Ref) -> bytes | bytearray:
        if ref.data is not None:
            return ref.data
        pending = self._fetches.get(ref.digest)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(ref))
            self._fetches[ref.digest] = pending
        else:
            self._fetches.move_to_end(ref.digest)
        data = await asyncio.shield(pending)
        self._evict()
        return data

    async def _fetch(self, ref: Ref) -> bytes | bytearray:
        try:
            data = await fetch(self._nc, ref)
        except BaseException:
            self._fetches.pop(ref.digest, None)  # the next call tries again
            raise
        self.fetched += 1
        self._bytes += len(data)
        return data

    def _evict(self) -> None:
        """Drop the least recently used objects fetched until the rest fit (fetches
        under way stay: someone is waiting on them)."""
        for digest, fetched in list(self._fetches.items()):
            if self._bytes <= self._max_bytes:
                return
            if fetched.done():
                del self._fetches[digest]
                self._bytes -= len(fetched.result())

    async def resolve(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], found: list[Ref]
    ) -> Args:
        """``args`` and ``kwargs`` with each Ref swapped for its value."""
        distinct = {ref.digest: ref for ref in found}
        datas = await asyncio.gather(*(self.bytes_of(ref) for ref in distinct.values()))
        values = {
            digest: payload.decode_value(data, protocol.CODEC_PICKLE)
            for digest, data in zip(distinct, datas, strict=True)
        }
        return swap(args, values), swap(kwargs, values)


def swap(value: Any, values: dict[str, Any]) -> Any:
    """``value`` with every Ref (in lists, tuples and dicts, at any depth) replaced by
    its value from ``values``; containers holding none are returned as they are."""
    return swap_where(value, lambda v: isinstance(v, Ref), lambda ref: values.get(ref.digest, ref))


def swap_where(value: Any, marked: Callable[[Any], bool], value_of: Callable[[Any], Any]) -> Any:
    """``value`` with every ``marked`` item in lists, tuples (named ones too) and dicts,
    at any depth, replaced by ``value_of(item)`` (Refs here, Futures' ``Input``s too)."""
    if marked(value):
        return value_of(value)
    if type(value) is list:
        return [swap_where(item, marked, value_of) for item in value]
    if type(value) is tuple:
        return tuple(swap_where(item, marked, value_of) for item in value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(swap_where(item, marked, value_of) for item in value))
    if type(value) is dict:
        return {key: swap_where(item, marked, value_of) for key, item in value.items()}
    return value
