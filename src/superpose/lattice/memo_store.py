"""The memo buckets: the action cache of ``cache=True`` functions, key → ``MemoEntry``.

One key per cached call (``protocol.memo_key``), in two buckets. ``sp_memo`` holds
results, and only the executor that ran a call writes one (``node/executor/
memo_writes.py``), once it has checked that the key is the hash of what it ran: a
caller may read results but never write them, so no caller can plant a result that
other callers would be handed. ``sp_memo_claims`` holds claims: the first caller of a
key claims it there with a create-only write (the others' creates fail), runs the
call, and drops its claim when the call ends, stored or failed (a failure is never
cached). Every write names the key in its subject, so a role may be pinned to one
app's keys (``security/roles.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from superpose import protocol
from superpose.errors import LatticeError
from superpose.lattice import ref_sealing
from superpose.lattice.batch import get_last_each, get_last_many
from superpose.lattice.kv_listing import current_entries

log = logging.getLogger("superpose.memo")


def bucket_configs(replicas: int) -> list[KeyValueConfig]:
    """The results and the claims buckets, made by ``ensure_assets`` with the others."""
    return [
        KeyValueConfig(
            bucket=bucket,
            history=1,
            ttl=protocol.MEMO_MAX_AGE_S,
            storage=StorageType.FILE,
            replicas=replicas,
            direct=True,  # gets by subject: a role is granted the keys of its app only
        )
        for bucket in (protocol.MEMO_BUCKET, protocol.MEMO_CLAIMS_BUCKET)
    ]


def values_config(replicas: int) -> ObjectStoreConfig:
    """Results too big for an entry, kept at most as long as any entry."""
    return ObjectStoreConfig(
        ttl=protocol.MEMO_MAX_AGE_S, storage=StorageType.FILE, replicas=replicas
    )


async def open_buckets(js: JetStreamContext) -> tuple[KeyValue, KeyValue]:
    """The results and the claims buckets, which the nodes' ``ensure_assets`` made."""
    try:
        return (
            await js.key_value(protocol.MEMO_BUCKET),
            await js.key_value(protocol.MEMO_CLAIMS_BUCKET),
        )
    except NotFoundError:
        raise LatticeError(
            f"the lattice has no {protocol.MEMO_BUCKET} or {protocol.MEMO_CLAIMS_BUCKET} "
            "bucket: its nodes predate this cache (restart them with this version of "
            "superpose)"
        ) from None


@dataclass(frozen=True)
class Found:
    """A key's current entry and the revision a compare-and-set must name."""

    entry: protocol.MemoEntry | None
    revision: int
    """0: no entry (never written, or deleted)."""


@dataclass(frozen=True)
class Listed:
    key: str
    entry: protocol.MemoEntry
    size: int


class MemoStore:
    """Results (read; stored by executors) and claims on one key; batched lookups;
    listing and clearing."""

    def __init__(self, results: KeyValue, claims: KeyValue, nc: NATS) -> None:
        self.results = results
        self.claims = claims
        self.nc = nc
        self.batch_allowed: bool | None = None
        """May this user make a batch direct get on the bucket? Probed on the first
        batch: a caller pinned to one app may not (the request names no key)."""

    async def look_many(self, keys: Sequence[str]) -> dict[str, protocol.MemoEntry]:
        """The stored results of those keys that have one: one batch direct get per
        1,000 keys where this user may make one, else a direct get per key (concurrent)."""
        unique = list(dict.fromkeys(keys))
        if len(unique) == 1:
            looks = await asyncio.gather(*(self.look(key) for key in unique))
            return {k: f.entry for k, f in zip(unique, looks, strict=True) if f.entry}
        if self.batch_allowed is None:
            self.batch_allowed = await batch_permitted(self.nc)
        subjects = [protocol.kv_subject(protocol.MEMO_BUCKET, key) for key in unique]
        get = get_last_many if self.batch_allowed else get_last_each
        found = await get(self.nc, protocol.kv_stream(protocol.MEMO_BUCKET), subjects)
        prefix = len(protocol.kv_subject(protocol.MEMO_BUCKET, ""))
        entries: dict[str, protocol.MemoEntry] = {}
        for subject, data in found.items():
            if not data:  # a delete marker: a cleared entry
                continue
            entry = _result(subject[prefix:], data)
            if entry is not None:
                entries[subject[prefix:]] = entry
        return entries

    async def look(self, key: str) -> Found:
        """The key's stored result, if any."""
        found = await _look(self.results, key)
        entry = found.entry
        if entry is not None and entry.running:  # only a claim's shape: not a result
            log.warning("cache entry %s is not a result: ignored", key)
            return Found(None, found.revision)
        return found

    async def value(self, entry: protocol.MemoEntry) -> bytes:
        """A result's encoded value: in its entry, or stored beside it when too big (the
        bytes checked against the digest the entry names; ``NotFoundError`` when gone)."""
        if not entry.stored:
            return entry.value
        return await ref_sealing.read(self.nc, protocol.MEMO_VALUES_BUCKET, entry.stored)

    async def store_value(self, digest: str, data: bytes | memoryview) -> None:
        """The executor: a result too big for its entry, under its digest."""
        await ref_sealing.store(self.nc, protocol.MEMO_VALUES_BUCKET, digest, data)

    async def look_claim(self, key: str) -> Found:
        """The key's claim, if a caller holds one (or held one and died)."""
        return await _look(self.claims, key)

    async def store(self, key: str, entry: protocol.MemoEntry) -> None:
        """The executor that ran the call: its result under the key it checked."""
        await self.results.put(key, entry.encode())

    async def claim(self, key: str, entry: protocol.MemoEntry, revision: int) -> int | None:
        """Claim the key iff its claim is still at ``revision`` (0: none); the claim's
        revision, or None when another caller got there first."""
        try:
            if revision == 0:
                return await self.claims.create(key, entry.encode())
            return await self.claims.update(key, entry.encode(), last=revision)
        except KeyWrongLastSequenceError:
            return None

    async def release(self, key: str, revision: int) -> None:
        """Drop our claim (the call ended, its result stored or not)."""
        # Replaced meanwhile (a taker after our claim went stale): theirs now.
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self.claims.delete(key, last=revision)

    async def entries(self, app: str | None = None, fn: str | None = None) -> list[Listed]:
        """Every entry of an app (one function; all apps)."""
        return await _listed(self.results, app, fn)

    async def clear(self, app: str, fn: str | None = None) -> int:
        """Remove an app's (a function's) results and claims, each by its own key; how
        many results."""
        listed = await self.entries(app, fn)
        claimed = await _listed(self.claims, app, fn)
        await asyncio.gather(
            *(self.results.purge(item.key) for item in listed),
            *(self.claims.purge(item.key) for item in claimed),
        )
        return len(listed)


async def _listed(kv: KeyValue, app: str | None, fn: str | None) -> list[Listed]:
    found: list[Listed] = []
    for update in await current_entries(kv, protocol.memo_filter(app, fn)):
        if update.value:
            try:
                entry = protocol.MemoEntry.decode(update.value)
            except protocol.ProtocolError:
                continue
            found.append(Listed(update.key, entry, entry.size or len(update.value)))
    return found


async def _look(kv: KeyValue, key: str) -> Found:
    try:
        got = await kv.get(key)
    except KeyNotFoundError as exc:  # deleted: a create must name the delete marker
        return Found(None, _deleted_revision(exc))
    if not got.value:
        return Found(None, got.revision or 0)
    try:
        return Found(protocol.MemoEntry.decode(got.value), got.revision or 0)
    except protocol.ProtocolError:
        log.warning("unreadable cache entry %s: replaced", key)
        return Found(None, got.revision or 0)


def _result(key: str, data: bytes) -> protocol.MemoEntry | None:
    try:
        entry = protocol.MemoEntry.decode(data)
    except protocol.ProtocolError:
        log.warning("unreadable cache entry %s: ignored", key)
        return None
    return None if entry.running else entry


PROBE_S = 5.0
"""How long the batch probe waits for an answer or a refusal before it gives up
on batches (one by one is always allowed, only slower)."""


async def batch_permitted(nc: NATS) -> bool:
    """Whether the server lets this user make a batch direct get on the memo bucket.

    A probe batch of one key: an answer of any kind means yes. A refused publish
    gets no answer, only an asynchronous ``-ERR`` that nats-py keeps as
    ``last_error`` (measured: not always before the pong of a flush that follows),
    so the probe watches for both.
    """
    subject = protocol.direct_get_subject(protocol.kv_stream(protocol.MEMO_BUCKET))
    before = nc.last_error
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    probe = {"multi_last": [protocol.kv_subject(protocol.MEMO_BUCKET, "_.probe")], "batch": 1}
    try:
        await nc.publish(subject, json.dumps(probe).encode(), reply=inbox)
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + PROBE_S, 0.002
        while True:
            with contextlib.suppress(nats.errors.TimeoutError):
                await sub.next_msg(timeout=pause)
                return True
            if _refused(nc.last_error, before, subject):
                log.info("batch cache lookups refused to this user: looking keys up one by one")
                return False
            if loop.time() > deadline:
                log.warning("no answer to a batch cache lookup: looking keys up one by one")
                return False
            pause = min(pause * 2, 0.1)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _refused(error: Exception | None, before: Exception | None, subject: str) -> bool:
    """A new permissions violation naming ``subject`` (nats-py lowercases it)."""
    said = str(error).lower()
    return (
        error is not None
        and error is not before
        and "permissions violation" in said
        and f'"{subject.lower()}"' in said
    )


def _deleted_revision(exc: KeyNotFoundError) -> int:
    entry = getattr(exc, "entry", None)
    revision = getattr(entry, "revision", None)
    return int(revision) if revision else 0
