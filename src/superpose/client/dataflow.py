"""Futures as arguments: a call waits for its inputs, and is sent once they are done.

``f.spawn(g.spawn(1))`` returns at once. The caller keeps the dependent call and
sends it only when every input has finished, with each input replaced by a pointer to
its result (``lattice/inputs.py``): the Payload its completion notification carried,
so big bytes go producer → blob store → consumer and never through here (the input's
future fetches them only if someone asks for its ``result()``). Nothing waits on a
node: a dependent never holds a slot while its inputs run, so a tree of any size
submitted at once cannot deadlock, and the executor's user needs no read of other
clients' results by id.

A failed input fails its dependents with ``UpstreamError`` naming the invocation that
failed first; a cancelled input cancels them; cancelling a dependent cancels its
invocation, or keeps it from being sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import Token
from typing import Any

from superpose import protocol
from superpose.client.futures import SENDING, Future, fail
from superpose.errors import UpstreamError, as_superpose_error
from superpose.lattice import payload
from superpose.lattice.inputs import Input, given

NOT_READY = (str, ("an input not ready yet",))
"""What a pending input is pickled as in the first encoding (which only checks that
the rest of the arguments can travel); the call is encoded again once it is ready."""


class collecting:  # named as the function it replaced: ``with collecting() as inputs``
    """Futures pickled inside this block (a call's arguments being encoded): a finished
    one travels as its result's pointer; the others are listed, and mark the call as
    one to send later. (A class: every call enters one.)"""

    __slots__ = ("_listed", "_token", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[int, Future] = {}
        self._listed: list[Future] = []
        self._token: Token[Callable[[Future], tuple[Any, ...]] | None] | None = None

    def __enter__(self) -> list[Future]:
        self._token = SENDING.set(self._send)
        return self._listed

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        SENDING.reset(self._token)
        self._listed.extend(self._waiting.values())

    def _send(self, future: Future) -> tuple[Any, ...]:
        if future.done() and not future.cancelled() and future.exception(0) is None:
            if future.memo_key is not None:  # a cached call's: its dependent reads the cache
                return _cached_input(future).__reduce__()
            if future.result_payload is not None:
                return Input(future.invocation_id, future.result_payload).__reduce__()
            return (given, (future.result(0),))  # a direct call's result is here anyway
        future.lazy_ok = True
        self._waiting[id(future)] = future
        return NOT_READY


def _cached_input(future: Future) -> Input:
    """A cached call's result as an input: named by its key, which a cached dependent
    is keyed by and its executor reads the value from the cache with, and carrying the
    result too, for an executor that cannot (another app's cache, an entry gone)."""
    result = future.result_payload
    if result is None:  # answered here (a cache hit, a direct call): inline
        data = payload.encode_value(future.result(0), protocol.CODEC_PICKLE)
        result = protocol.Payload(codec=protocol.CODEC_PICKLE, data=bytes(data), size=len(data))
    return Input(future.invocation_id or "", result, future.memo_key)


def after(inputs: list[Future], send: Callable[[], Future]) -> Future:
    """A future for a call ``send`` makes once every one of ``inputs`` has finished
    well; a failed or cancelled input settles it at once instead."""
    dependent = Future()
    sent: list[Future] = []
    lock = threading.Lock()
    remaining = [len(inputs)]

    def cancel_sent(_: Future) -> None:
        for invocation in sent:
            invocation.cancel()

    def on_input(done: Any) -> None:
        if dependent.done():
            return
        if done.cancelled():
            dependent.cancel()
            return
        error = done.exception(0)
        if error is not None:
            fail(dependent, upstream(done, error))
            return
        with lock:
            remaining[0] -= 1
            if remaining[0] != 0:
                return
        _send(dependent, send, sent)

    dependent.on_cancel = cancel_sent
    for future in inputs:
        future.add_done_callback(on_input)
    return dependent


def _send(dependent: Future, send: Callable[[], Future], sent: list[Future]) -> None:
    try:
        invocation = send()
    except Exception as exc:  # e.g. the client closed while the inputs ran
        fail(dependent, as_superpose_error(exc))
        return
    invocation.lazy_ok = True  # its bytes are fetched only if someone asks for them
    dependent.invocation_id = invocation.invocation_id
    sent.append(invocation)
    if dependent.cancelled():  # cancelled while it was being sent
        invocation.cancel()
    invocation.add_done_callback(lambda _: dependent.adopt(invocation))


def upstream(input_future: Any, error: BaseException) -> UpstreamError:
    """The error a dependent fails with: the first failure up the graph, by name."""
    if isinstance(error, UpstreamError):
        return UpstreamError(error.invocation_id, error.error)
    return UpstreamError(getattr(input_future, "invocation_id", ""), error)
