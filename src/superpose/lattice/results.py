"""The results bucket: durable results by invocation id, shared by clients and nodes.

An idempotency key's result is stored under a hash of its id and sealed with its id
(``protocol.keyed_hidden``, ``sealed.KEYED``): a caller may read keyed results by
id, and a literal ``idem.*`` read must give away neither the id nor the value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError

from superpose import protocol
from superpose.errors import LatticeError
from superpose.lattice.batch import Message, get_last_each, get_last_many, publish_atomic
from superpose.lattice.connection import Assets, permits_of
from superpose.lattice.sealed import KEYED
from superpose.support.retry import Backoff

WAIT_POLLS = Backoff(0.02, factor=2, max_s=0.5)
"""Pauses between looks for a result: soon at first, every half second at most."""


async def get(assets: Assets, invocation_id: str) -> protocol.Result | None:
    try:
        entry = await assets.results.get(protocol.result_key(invocation_id))
    except KeyNotFoundError:
        return None
    return _decoded(invocation_id, entry.value) if entry.value else None


def _stored(invocation_id: str, data: bytes) -> bytes:
    """What is written for a result: sealed with its id if it is a keyed one."""
    return KEYED.seal(invocation_id, data) if protocol.is_keyed(invocation_id) else data


def _decoded(invocation_id: str, data: bytes) -> protocol.Result | None:
    """A stored result; None for a keyed record that does not open with its id (not
    this id's, or altered): as good as absent."""
    if protocol.is_keyed(invocation_id):
        opened = KEYED.open(invocation_id, data)
        if opened is None:
            return None
        data = opened
    return protocol.Result.decode(data)


async def get_many(
    nc: NATS, ids: Sequence[str], *, one_by_one: bool = False
) -> dict[str, protocol.Result]:
    """Stored results of those ids that have one, in one round trip per 1,000; with
    ``one_by_one``, or for a user that may not send the batch get (a narrow role: its
    request subject does not say whose results it reads), a direct get each, whose
    subject names the result (an executor's or a caller's user may read only its own)."""
    by_subject = {protocol.results_subject(protocol.result_key(i)): i for i in ids}
    get = get_last_each if one_by_one or not may_batch(nc) else get_last_many
    found = await get(nc, protocol.RESULTS_STREAM, list(by_subject))
    results: dict[str, protocol.Result] = {}
    for subject, data in found.items():
        result = _decoded(by_subject[subject], data) if data else None
        if result is not None:
            results[result.id] = result
    return results


def may_batch(nc: NATS) -> bool:
    """Whether ``nc``'s user may send the batch direct get on the results stream."""
    return permits_of(nc).may_publish(protocol.direct_get_subject(protocol.RESULTS_STREAM))


async def store_many(nc: NATS, encoded: Iterable[tuple[str, bytes]]) -> None:
    """Write (invocation id, encoded result) pairs with one fsync per batch; raises if
    the batch did not land. Encoded by the caller, who sends the same bytes on."""
    messages = [
        Message(protocol.results_subject(protocol.result_key(inv_id)), _stored(inv_id, data))
        for inv_id, data in encoded
    ]
    if messages:
        await publish_atomic(nc, messages)


async def mark_cancelled(nc: NATS, ids: Sequence[str], node: str) -> list[str]:
    """Store a cancelled result for each id that has no result yet; returns those ids.

    The write is conditional (no earlier message on the key), so a result that
    landed first is never overwritten: cancelling finished work is a no-op.
    """

    async def one(invocation_id: str) -> str | None:
        result = protocol.Result(
            id=invocation_id,
            node=node,
            error=protocol.ErrorInfo(
                protocol.ERR_CANCELLED, "Cancelled", f"invocation {invocation_id} was cancelled"
            ),
            finished=time.time(),
        )
        try:
            await publish_atomic(
                nc,
                [
                    Message(
                        protocol.results_subject(protocol.result_key(invocation_id)),
                        _stored(invocation_id, result.encode()),
                        {"Nats-Expected-Last-Subject-Sequence": "0"},
                    )
                ],
            )
        except LatticeError as exc:
            if "wrong last sequence" in exc.message:  # a result was stored first
                return None
            raise
        return invocation_id

    done = await asyncio.gather(*(one(i) for i in ids))
    return [i for i in done if i is not None]


async def wait(assets: Assets, invocation_id: str, timeout: float | None) -> protocol.Result | None:
    """The result once stored, polling gently; None when ``timeout`` passes first.

    Polling (not a watch) survives reconnects and server restarts without any
    state to rebuild; the interval is capped at half a second.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    polls = 0
    while True:
        try:
            found = await get(assets, invocation_id)
        except (nats.errors.Error, OSError):
            found = None  # the lattice is reconnecting: try again
        if found is not None:
            return found
        if deadline is not None and time.monotonic() >= deadline:
            return None
        polls += 1
        await asyncio.sleep(WAIT_POLLS.pause_s(polls))
