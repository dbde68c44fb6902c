"""Keep an in-memory copy of a KV bucket, fed by a watch that restarts when it dies.

The registry and the node directory both read on every call; a mirror makes
that read free and brings a change to every reader within milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.js.kv import KeyValue

from superpose.support.retry import Backoff, retry

log = logging.getLogger("superpose.lattice")
RESTART = Backoff(0.5)
"""How long a watch that died waits before it starts again."""
STOP_WATCH_S = 2.0

Apply = Callable[[str, bytes | None, bool], None]
"""(key, value, deleted) for each entry, in bucket order; ``deleted`` is a delete or
purge marker (an empty value is a value: the cancels bucket stores only keys)."""


async def follow_bucket(kv: KeyValue, apply: Apply, synced: asyncio.Event, what: str) -> None:
    """Apply every entry of ``kv`` and then every change; set ``synced`` once caught up."""

    async def on_entry(entry: KeyValue.Entry | None) -> None:
        if entry is None:
            # nats-py can send its end-of-initial-values marker before
            # entries the server already sent: trust it only when empty.
            if not synced.is_set() and (await kv.status()).values == 0:
                synced.set()
            return
        apply(entry.key, entry.value, entry.operation in ("DEL", "PURGE"))
        if entry.delta == 0:  # the newest entry the bucket holds: caught up
            synced.set()

    await follow(kv.watchall, on_entry, what)


async def follow(
    open_watch: Callable[[], Awaitable[KeyValue.KeyWatcher]],
    on_entry: Callable[[KeyValue.Entry | None], Awaitable[None]],
    what: str,
) -> None:
    """Every entry a KV watch yields, for as long as the caller runs: a watch that dies
    with its connection, or ends, is started again."""

    async def watch_once() -> None:
        watcher = await open_watch()
        try:
            async for entry in watcher:
                await on_entry(entry)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # a dying connection must not hold up a close
                await asyncio.wait_for(watcher.stop(), STOP_WATCH_S)  # type: ignore[no-untyped-call]
            raise

    def restarting(error: BaseException, failures: int) -> None:
        log.warning("%s watch failed; restarting it", what, exc_info=error)

    while True:
        await retry(watch_once, backoff=RESTART, on_failure=restarting)


class BucketMirror:
    """A copy of one KV bucket in memory, kept current by ``follow_bucket``; a subclass
    says what an entry means (``_apply``) and names the bucket for logs (``what``)."""

    what = "bucket"

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow the bucket; returns once what it holds now is applied."""
        if self._task is None:
            self._task = asyncio.create_task(
                follow_bucket(self.kv, self._apply, self._synced, self.what)
            )
        await self._synced.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _apply(self, key: str, value: bytes | None, deleted: bool) -> None:
        raise NotImplementedError
