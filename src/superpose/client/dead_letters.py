"""Durable invocations after the fact: dead letters, replay, and stored results as JSON.

A durable invocation that failed its last attempt is kept in the dead-letter
bucket (key: its invocation id) for ``superpose failed``. Replaying one submits
the same function and arguments again under a new invocation id, then removes
the letter. The CLI and the gateway share these helpers.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError

from superpose import protocol
from superpose.client.durable import wait_accepted
from superpose.errors import BadRequestError, NotFoundError, SuperposeError
from superpose.lattice import issued, objects, payload, sealed
from superpose.lattice.connection import Assets
from superpose.lattice.kv_listing import current_entries

if TYPE_CHECKING:
    from superpose.client.client import Client

log = logging.getLogger("superpose.durable")


async def list_failed(assets: Assets, app: str | None = None) -> list[protocol.DeadLetter]:
    """Every dead letter (of one app, if given), oldest failure first; [] if there is none."""
    letters = []
    for entry in await current_entries(assets.dead):
        letter = _letter(entry.key, entry.value)
        if letter is not None and (app is None or letter.app == app):
            letters.append(letter)
    letters.sort(key=lambda letter: letter.failed)
    return letters


def _letter(key: str, value: bytes) -> protocol.DeadLetter | None:
    if not value:
        return None
    try:
        return protocol.DeadLetter.decode(value)
    except protocol.ProtocolError:
        log.warning("skipping an unreadable dead letter %s", key)
        return None


async def get_failed(assets: Assets, invocation_id: str) -> protocol.DeadLetter:
    """One dead letter; NotFoundError naming the id if there is none."""
    _check_id(invocation_id)
    try:
        entry = await assets.dead.get(invocation_id)
    except KeyNotFoundError:
        entry = None
    if entry is None or not entry.value:
        raise NotFoundError(
            f"no failed invocation {invocation_id} (it was never dead-lettered, was replayed "
            "already, or expired): `superpose failed` lists them"
        )
    return protocol.DeadLetter.decode(entry.value)


async def replay(client: Client, invocation_id: str) -> str:
    """Submit a dead-lettered invocation again under a new id; returns that id.

    The new invocation starts from attempt 1 with the function's retry budget.
    The dead letter is removed once the new invocation is persisted.
    """
    letter = await get_failed(client.assets, invocation_id)
    inv = protocol.Invocation.decode(letter.invocation)
    blob = inv.args.blob
    if blob is not None and not await objects.exists(
        client.assets.js, protocol.BLOBS_BUCKET, sealed.object_name(blob)
    ):
        raise NotFoundError(
            f"cannot replay {invocation_id}: its arguments (spilled to the blob store) expired"
        )
    inv.ctx = protocol.CallContext(trace_id=inv.ctx.trace_id)  # the old caller is gone
    future = client.resubmit(inv)
    await wait_accepted(future)
    try:
        await client.assets.dead.delete(invocation_id)
    except Exception:  # the replay is persisted: report it, and warn about the letter left
        log.warning(
            "replayed %s as %s but could not remove its dead letter; "
            "replaying it again would run it again",
            invocation_id,
            inv.id,
        )
    return inv.id


async def cancel(client: Client, invocation_id: str) -> str | None:
    """Cancel one durable invocation: None if it was, else how it had already finished.

    The answer is ``done``, ``failed`` or ``cancelled`` (cancelled before).
    An id that was never issued (mistyped, or an idempotency key's not submitted
    yet) is a NotFoundError, and nothing is stored for it: every id is recorded
    as issued before its submission counts as accepted (``lattice/issued.py``).
    """
    _check_id(invocation_id)
    if not await issued.was_issued(client.assets.issued, invocation_id):
        found = await client.result_async(invocation_id, wait=False)
        if found is None:
            raise NotFoundError(unknown_invocation(invocation_id))
        return status_of(found)  # a result outlives the record of a client gone quiet
    if await client.cancel_async([invocation_id]):
        return None
    found = await client.result_async(invocation_id, wait=False)
    if found is None:  # the cancel write failed for another reason than a stored result
        raise SuperposeError(f"could not cancel {invocation_id}: the lattice refused; try again")
    return status_of(found)


def unknown_invocation(invocation_id: str) -> str:
    """Why an id has nothing behind it, for the CLI and the gateway alike."""
    return (
        f"no invocation {invocation_id}: it was never issued (an idempotency key's id "
        "exists once its invocation is submitted), or it expired"
    )


def status_of(result: protocol.Result | None) -> str:
    """``pending`` (nothing stored yet), ``done``, ``failed`` or ``cancelled``."""
    if result is None:
        return "pending"
    if result.error is None:
        return "done"
    return "cancelled" if result.error.kind == protocol.ERR_CANCELLED else "failed"


async def result_json(nc: NATS, result: protocol.Result) -> bytes:
    """A successful result's value as JSON bytes, whichever codec it was stored in.

    JSON-codec results (CLI and HTTP submissions) are passed through; Python
    values are unpickled here and printed with ``repr`` for what JSON lacks.
    """
    value = result.value
    if value is None:
        raise SuperposeError(f"invocation {result.id} has no value (status {status_of(result)})")
    data = await payload.unwrap(nc, value) if value.blob is not None else value.data or b""
    if value.codec == protocol.CODEC_JSON:
        return bytes(data)
    try:
        decoded = payload.decode_value(data, value.codec)
    except Exception as exc:
        raise SuperposeError(
            f"the result of {result.id} is a Python value that cannot be decoded here: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return json.dumps(decoded, default=repr).encode()


def _check_id(invocation_id: str) -> None:
    if not protocol.is_valid_invocation_id(invocation_id):
        raise BadRequestError(f"{invocation_id!r} is not an invocation id")
