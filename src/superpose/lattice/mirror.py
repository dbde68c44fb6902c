"""Keep an in-memory copy of a KV bucket, fed by a watch that restarts when it dies.

The registry and the node directory both read on every call; a mirror makes
that read free and brings a change to every reader within milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.js.kv import KeyValue

log = logging.getLogger("superpose.lattice")
RESTART_S = 0.5
STOP_WATCH_S = 2.0

Apply = Callable[[str, bytes | None, bool], None]
"""(key, value, deleted) for each entry, in bucket order; ``deleted`` is a delete or
purge marker (an empty value is a value: the cancels bucket stores only keys)."""


async def follow_bucket(kv: KeyValue, apply: Apply, synced: asyncio.Event, what: str) -> None:
    """Apply every entry of ``kv`` and then every change; set ``synced`` once caught up."""
    while True:
        watcher = None
        try:
            watcher = await kv.watchall()
            async for entry in watcher:
                if entry is None:
                    # nats-py can send its end-of-initial-values marker before
                    # entries the server already sent: trust it only when empty.
                    if not synced.is_set() and (await kv.status()).values == 0:
                        synced.set()
                    continue
                apply(entry.key, entry.value, entry.operation in ("DEL", "PURGE"))
                if entry.delta == 0:  # the newest entry the bucket holds: caught up
                    synced.set()
        except asyncio.CancelledError:
            if watcher is not None:  # a dying connection must not hold up a close
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watcher.stop(), STOP_WATCH_S)  # type: ignore[no-untyped-call]
            raise
        except Exception:  # the watch died with the connection; start it again
            log.warning("%s watch failed; restarting it", what, exc_info=True)
            await asyncio.sleep(RESTART_S)
