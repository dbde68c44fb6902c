"""Futures among a call's arguments, as they travel: a pointer to the input's result.

A caller sends a dependent call only once its inputs are done (``client/dataflow.py``),
and each input Future is pickled as an ``Input``: the invocation's id and its result
Payload as the completion notification carried it: inline bytes, the name of a sealed
blob in the blob store, or an offer. The node resolves it like a Ref (``resolve``), so
a big intermediate result goes producer → blob store → consumer and never through the
caller, and the executor's user needs no read of another client's results by id: the
blob's name is the capability (``lattice/sealed.py``).
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.lattice import payload
from superpose.lattice.ref_args import swap_where
from superpose.support.collecting import collecting

_arriving: ContextVar[list[Input] | None] = ContextVar("superpose_inputs_arriving", default=None)


class Input:
    """An input's result by pointer; swapped for its value before the function runs.
    ``memo_key``: the input is a cached call's result, and a cached dependent is keyed
    by that key (its executor reads the input's value from the cache by it)."""

    def __init__(
        self, invocation_id: str, result: protocol.Payload, memo_key: str | None = None
    ) -> None:
        self.invocation_id = invocation_id
        self.result = result
        self.memo_key = memo_key

    def __reduce__(self) -> tuple[Any, ...]:
        r = self.result
        fields = (self.invocation_id, r.codec, r.data, r.blob, r.size, r.source, r.shm)
        return (_arrive, (*fields, self.memo_key) if self.memo_key else fields)

    def __repr__(self) -> str:
        return f"Input({self.invocation_id!r}, {self.result.size} bytes)"


def _arrive(
    invocation_id: str,
    codec: str,
    data: bytes | None,
    blob: str | None,
    size: int,
    source: str | None,
    shm: str | None,
    memo_key: str | None = None,
) -> Input:
    """An Input unpickled: noted for ``arriving()`` when someone is collecting."""
    result = protocol.Payload(codec=codec, data=data, blob=blob, size=size, source=source, shm=shm)
    found = Input(invocation_id, result, memo_key)
    collecting = _arriving.get()
    if collecting is not None:
        collecting.append(found)
    return found


def arriving() -> AbstractContextManager[list[Input]]:
    """The Inputs unpickled inside this block (a call's arguments being decoded)."""
    return collecting(_arriving)


async def resolve(
    nc: NATS,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    found: list[Input],
    known: dict[int, Any] | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args`` and ``kwargs`` with each Input swapped for its value, every input's
    bytes read at once (inline ones cost nothing; a blob is read by its name). Inputs
    whose value is ``known`` (by the Input's ``id``: read from the cache) are not read."""
    values = dict(known or {})
    distinct = {id(i): i for i in found if id(i) not in values}
    datas = await asyncio.gather(*(payload.unwrap(nc, i.result) for i in distinct.values()))
    for (key, i), data in zip(distinct.items(), datas, strict=True):
        values[key] = payload.decode_value(data, i.result.codec)
    return swap(args, values), swap(kwargs, values)


def swap(value: Any, values: dict[int, Any]) -> Any:
    """``value`` with every Input (in lists, tuples and dicts, at any depth) replaced by
    its value from ``values`` (keyed by the Input's ``id``)."""
    return swap_where(
        value, lambda v: isinstance(v, Input), lambda found: values.get(id(found), found)
    )


def given(value: Any) -> Any:
    """An input whose value the caller already had (a direct call's result arrives with
    its answer), sent as itself."""
    return value
