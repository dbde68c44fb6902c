"""The issued bucket: which durable invocation ids exist, so a cancel or a lookup can
tell an id that was never issued from one still queued.

A queued invocation has no record of its own anywhere it could be found by id (it
travels in an envelope with others), so the caller's side records each id before
it counts as accepted. The records cost one write per burst, not per invocation: a
client's ids are numbered in order, and its key holds the highest number it has
persisted (``protocol.issued_mark``).
"""

from __future__ import annotations

from collections.abc import Iterable

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from superpose import protocol


def marks(invocation_ids: Iterable[str]) -> dict[str, int]:
    """The records that cover these ids: each key with the highest number it must hold."""
    highest: dict[str, int] = {}
    for inv_id in invocation_ids:
        mark = protocol.issued_mark(inv_id)
        if mark is not None:
            key, seq = mark
            highest[key] = max(seq, highest.get(key, 0))
    return highest


async def record(kv: KeyValue, key: str, seq: int) -> None:
    """Record ``key``'s ids up to ``seq`` as issued (an idempotency id: seq 0)."""
    await kv.put(key, f"{seq:x}".encode())


async def was_issued(kv: KeyValue, invocation_id: str) -> bool:
    """True if a caller recorded this id before its invocation was accepted. Records
    expire with results (``RESULT_TTL_S`` after the client's last submission)."""
    mark = protocol.issued_mark(invocation_id)
    if mark is None:
        return False
    key, seq = mark
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return False
    if not entry.value:
        return False
    try:
        return int(entry.value.decode(), 16) >= seq
    except ValueError:
        return False
