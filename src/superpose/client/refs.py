"""``sp.put`` and ``sp.get``: values on the lattice by reference, from scripts and from
inside functions alike (there, through the executor's client).

    ref = sp.put(frame)              # an sp.Ref: digest, size, where it is held
    total.remote(ref)                # the function receives the frame itself
    sp.get(ref)                      # the value again; await sp.get.aio(ref) in async code

Each client holds the objects its process put (``lattice/ref_holder.py``); a call
whose arguments carry Refs keeps them alive until it settles (``pin_sent``).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import TYPE_CHECKING, Any

from superpose import protocol, runtime
from superpose.client import lineage, session
from superpose.client.futures import Future
from superpose.config import SPILL_THRESHOLD_BYTES
from superpose.errors import BadRequestError
from superpose.lattice import oob, payload
from superpose.lattice.ref_holder import RefHolder
from superpose.lattice.refs import Ref, digest_of, fetch
from superpose.support.eventloop import on_loop

if TYPE_CHECKING:
    from superpose.client.client import Client

_holders: weakref.WeakKeyDictionary[Client, RefHolder] = weakref.WeakKeyDictionary()
_making = threading.Lock()
"""Held while a client's holder is looked up or made: threads put at once."""


def holder_of(client: Client) -> RefHolder:
    """The objects ``client``'s process put through it; freed when it closes."""
    with _making:
        holder = _holders.get(client)
        if holder is None:
            holder = _holders[client] = _new_holder(client)
    return holder


async def start_refs(client: Client) -> None:
    """At a client's start: its holder hears leases and renews its own."""
    await holder_of(client).start()
    lineage.install(client)


def _new_holder(client: Client) -> RefHolder:
    holder = RefHolder(client.nc, client.offers, client.id, client.loop, _node)
    client.close_before_disconnect(holder.close)
    return holder


def serialize(value: Any) -> bytes:
    """``value`` pickled as a call's argument would be; ``SerializationError`` naming
    the part that cannot be (a lock, an open file) otherwise."""
    codec = protocol.CODEC_PICKLE
    try:
        encoded = payload.encode_value(value, codec)
    except Exception as exc:
        raise payload.cannot_send("the value given to sp.put", value, codec, exc) from exc
    return oob.as_bytes(encoded)  # one string of bytes: its hash names the Ref


class _Put:
    """``sp.put(value, durable=False)`` → an ``sp.Ref``; ``await sp.put.aio(...)`` in
    async code."""

    def __call__(self, value: Any, *, durable: bool = False) -> Ref:
        data = serialize(value)
        digest = digest_of(data)
        client = session.current_client()
        put = holder_of(client).put(data, digest, durable=durable, producer=_producer())
        ref: Ref = client.run(lineage.put_recorded(client.nc, put, _call()))
        return ref

    async def aio(self, value: Any, *, durable: bool = False) -> Ref:
        data = serialize(value)
        big = len(data) > SPILL_THRESHOLD_BYTES  # hashed in a thread: the loop serves others
        digest = await asyncio.to_thread(digest_of, data) if big else digest_of(data)
        client = session.current_client()
        holder = holder_of(client)
        put = holder.put(data, digest, durable=durable, producer=_producer())
        recorded = lineage.put_recorded(client.nc, put, _call())
        ref: Ref = await _on_client_loop(client, recorded)
        return ref


class _Get:
    """``sp.get(ref)`` → the value; ``await sp.get.aio(ref)`` in async code. An object
    that is gone raises ``sp.ObjectLostError`` naming it."""

    def __call__(self, ref: Ref) -> Any:
        inline = _checked(ref).data
        if inline is not None:  # no lattice needed
            return payload.decode_value(inline, protocol.CODEC_PICKLE)
        client = session.current_client()
        data = client.run(fetch(client.nc, ref))
        return payload.decode_value(data, protocol.CODEC_PICKLE)

    async def aio(self, ref: Ref) -> Any:
        inline = _checked(ref).data
        if inline is not None:
            return payload.decode_value(inline, protocol.CODEC_PICKLE)
        client = session.current_client()
        data = await _on_client_loop(client, fetch(client.nc, ref))
        return payload.decode_value(data, protocol.CODEC_PICKLE)


put = _Put()
get = _Get()


def _node() -> str:
    """The node this process is an executor of ("" elsewhere)."""
    node = runtime.current()
    return node.node_id if node is not None else ""


def _producer() -> str:
    """The invocation this code runs on behalf of, on a node ("" elsewhere)."""
    invocation = runtime.current_invocation.get()
    return invocation.id if invocation is not None else ""


def _call() -> runtime.Invocation | None:
    """The call this code runs on behalf of, on a node (None elsewhere)."""
    return runtime.current_invocation.get()


def _checked(ref: object) -> Ref:
    if not isinstance(ref, Ref):
        raise BadRequestError(
            f"sp.get takes an sp.Ref (what sp.put returned); got a value of type "
            f"{payload.type_name(ref)}"
        )
    return ref


async def _on_client_loop(client: Client, coro: Any) -> Any:
    """``coro`` on the client's loop, awaited from whichever loop this is."""
    if on_loop(client.loop):
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, client.loop))


def pin_sent(future: Future, sent: list[Ref]) -> None:
    """Keep the Refs a call's arguments carry alive until the call settles: an
    ephemeral object is not freed while a pending call still needs it."""
    if not sent:
        return
    pinned = [sent]

    def release(_: object) -> None:
        pinned.clear()

    future.add_done_callback(release)
