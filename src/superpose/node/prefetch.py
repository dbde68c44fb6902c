"""Warm a bundle as soon as an alias moves to it.

After ``promote`` or ``rollback`` the next call of the app runs a version the
node may never have fetched. Fetching it when the alias moves, not when that
call arrives, keeps the bundle download off the call's latency. The node
decides what "warm" means through its ``fetch`` callback (typically
``store.materialize``); this class only notices moves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from superpose import protocol
from superpose.lattice.mirror import follow

log = logging.getLogger("superpose.node.prefetch")

Fetch = Callable[[str], Awaitable[object]]


class AliasPrefetcher:
    """Calls ``fetch(digest)`` once for each new target of any alias of any app.

    Aliases that already pointed somewhere when ``start`` ran are not fetched:
    a node joining a lattice with many apps must not download all of them.
    """

    def __init__(self, nc: NATS, fetch: Fetch) -> None:
        self._nc = nc
        self._fetch = fetch
        self._targets: dict[str, str] = {}
        """alias key → digest it points at, so a rewrite of the same value fetches nothing."""
        self._since = 0
        """Bucket revision when we started: entries up to it are the past, not moves."""
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._follow: asyncio.Task[None] | None = None
        self._kv: KeyValue | None = None

    async def start(self) -> None:
        kv = self._kv = await self._nc.jetstream().key_value(protocol.REGISTRY_BUCKET)
        self._since = (await kv.status()).stream_info.state.last_seq
        self._follow = asyncio.create_task(self._watch(kv))

    async def stop(self) -> None:
        tasks = [t for t in (self._follow, *self._fetching.values()) if t is not None]
        self._follow = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, kv: KeyValue) -> None:
        async def on_entry(entry: KeyValue.Entry | None) -> None:
            if entry is not None:
                self._seen(entry.key, entry.value, entry.operation, entry.revision or 0)

        await follow(lambda: kv.watch(protocol.ALIAS_WILDCARD), on_entry, "alias")

    def _seen(self, key: str, value: bytes | None, operation: str | None, revision: int) -> None:
        if operation in ("DEL", "PURGE") or not value:
            self._targets.pop(key, None)
            return
        try:
            digest = protocol.AliasRecord.decode(value).version
        except protocol.ProtocolError:
            return  # not an alias anyone could follow: nothing to warm
        if self._targets.get(key) == digest:
            return
        self._targets[key] = digest
        if revision > self._since and digest not in self._fetching:
            task = asyncio.create_task(self._warm(key, digest))
            self._fetching[digest] = task
            task.add_done_callback(lambda _: self._fetching.pop(digest, None))

    async def _warm(self, key: str, digest: str) -> None:
        try:
            await self._fetch(await self._code_of(key, digest))
        except asyncio.CancelledError:
            raise
        except Exception:  # the first call fetches it again and reports the error
            log.warning("prefetch of %s (%s) failed", digest[:12], key, exc_info=True)

    async def _code_of(self, key: str, version: str) -> str:
        """The bundle digest of the version an alias names: aliases hold version ids, which
        are code digests only for versions with no environment of their own."""
        app = key.split(".")[1]
        if self._kv is None:
            return version
        try:
            entry = await self._kv.get(protocol.version_key(app, version))
        except KeyNotFoundError:
            return version
        return protocol.Version.from_json(entry.value or b"{}").digest
