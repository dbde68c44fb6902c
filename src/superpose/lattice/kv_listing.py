"""Every entry a key-value bucket holds now: the one way superpose lists a bucket.

Not ``kv.keys()`` or ``kv.watchall()``'s end marker: nats-py decides "nothing more"
from a consumer-info reply that can arrive after the server has already sent the
entries, and then puts its end marker before them; a listing came back empty on a
bucket that held the key (CI saw it for ``secret ls``). Here the end is the entry with
nothing pending after it, and "the bucket is empty" is decided by how many entries the
consumer has sent plus how many are pending, which the race cannot make zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.errors
from nats.js import api
from nats.js.errors import NotFoundError as JsNotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from superpose.errors import LatticeError

LIST_IDLE_S = 10.0
"""How long a listing waits for the next entry the server said it would send."""

_DELETED = {KV_DEL, KV_PURGE}


@dataclass(frozen=True)
class StoredEntry:
    key: str
    value: bytes
    """Empty for a headers-only listing."""
    revision: int
    created: float
    """When it was written, in seconds since the epoch."""


_MARKER_REASON = "Nats-Marker-Reason"


async def current_entries(
    kv: KeyValue, keys: str = ">", *, meta_only: bool = False
) -> list[StoredEntry]:
    """Every live entry under ``keys`` (a key or a wildcard), in stream order.

    ``meta_only`` reads headers only, so values (secrets) never leave the server.
    Deleted and purged keys are left out.
    """
    js, stream, prefix = kv._js, kv._stream, kv._pre  # nats-py keeps these private
    try:
        sub = await js.subscribe(
            prefix + keys,
            stream=stream,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            headers_only=meta_only,
            inactive_threshold=60.0,
        )
    except JsNotFoundError as exc:
        raise LatticeError(f"cannot list {stream}: it does not exist") from exc
    except nats.errors.Error as exc:  # a refused consumer goes unanswered
        raise LatticeError(f"cannot list {stream}: {exc or type(exc).__name__}") from exc
    found: list[StoredEntry] = []
    try:
        info = await sub.consumer_info()
        if info.num_pending == 0 and (info.delivered is None or not info.delivered.consumer_seq):
            return found
        while True:
            try:
                msg = await sub.next_msg(timeout=LIST_IDLE_S)
            except nats.errors.TimeoutError as exc:
                raise LatticeError(
                    f"listing {stream}: no entry from the lattice in {LIST_IDLE_S:g} s"
                ) from exc
            meta = msg.metadata
            headers = msg.headers or {}
            deleted = headers.get(KV_OP) in _DELETED or _MARKER_REASON in headers
            if not deleted:
                found.append(
                    StoredEntry(
                        key=msg.subject[len(prefix) :],
                        value=msg.data,
                        revision=meta.sequence.stream,
                        created=meta.timestamp.timestamp(),
                    )
                )
            if meta.num_pending == 0:
                return found
    finally:
        await sub.unsubscribe()
