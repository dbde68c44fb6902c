"""Bundles in the lattice's object store: upload what is missing, fetch and verify.

Both directions move files with bounded concurrency (``TRANSFER_CONCURRENCY`` at a
time), so a bundle of thousands of files neither floods the server with requests
nor holds every file in memory at once; a node writes what it fetched into a
staging folder as it goes (large files from a thread, in chunks), so its event
loop, and with it its heartbeat, keeps running through a long fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.code import manifest, signing_manifest
from superpose.code.bundle import Bundle, digest_of_listing, sha256_hex
from superpose.code.paths import COMPLETE_MARKER
from superpose.errors import NotFoundError, SuperposeError
from superpose.lattice import objects
from superpose.lattice.signing import Signer
from superpose.support.readonly import seal
from superpose.support.retry import THROUGH_ELECTION, retry

log = logging.getLogger("superpose.code")
T = TypeVar("T")

__all__ = ["COMPLETE_MARKER", "fetch_listing", "materialize", "upload"]

TRANSFER_CONCURRENCY = 16
"""Files fetched (by a node) or checked and uploaded (by deploy) at a time."""
THREAD_BYTES = 1024 * 1024
"""Files at least this large are hashed and written off the event loop."""
WRITE_CHUNK_BYTES = 1024 * 1024
UNAVAILABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)
"""How a fetch fails while the bundles stream has no leader (the 4-9 s NATS's Raft
takes to elect one after its server dies) or this connection has no server: the
store's requests go unanswered. A missing object or a failed check is not one of these."""
FETCH_RETRY = THROUGH_ELECTION
"""Between tries of a fetch that found the store unavailable: soon, so the first try the
new leader can answer lands; jittered, so nodes that failed together do not return in step."""


async def bounded(items: Iterable[T], work: Callable[[T], Awaitable[None]]) -> None:
    """``work`` on every item, at most ``TRANSFER_CONCURRENCY`` at a time; the first
    failure cancels the rest and is raised as itself (a few workers draining one
    iterator, not one task per item)."""
    source: Iterator[T] = iter(items)

    async def worker() -> None:
        for item in source:
            await work(item)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(TRANSFER_CONCURRENCY):
                group.create_task(worker())
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


async def upload(nc: NATS, bundle: Bundle, *, signer: Signer | None = None) -> tuple[str, int]:
    """Store the bundle; returns its digest and how many files had to be uploaded.

    Files are read only if the store lacks them, and the manifest is written last: a
    deploy that fails midway leaves at most some content-addressed files, never a
    bundle that names a missing one.

    With ``signer``, its signature goes into the manifest (added to those already there
    when the bundle was stored before): nodes run code a trusted key signed.
    """
    digest = bundle.digest
    bucket = protocol.BUNDLES_BUCKET
    manifest_name = protocol.bundle_manifest_name(digest)
    js = nc.jetstream()
    if await objects.exists(js, bucket, manifest_name):
        if signer is not None:
            await signing_manifest.add_signature(nc, digest, signer)
        return digest, 0
    holder: dict[str, str] = {}  # file digest → one path holding it
    for path, file_digest in bundle.listing.items():
        holder.setdefault(file_digest, path)
    uploaded = 0
    one_large = asyncio.Lock()  # small files 16 at a time, large ones in turn: memory stays low

    async def one(file_digest: str) -> None:
        nonlocal uploaded
        name = protocol.file_object_name(file_digest)
        if await objects.exists(js, bucket, name):
            return
        path = holder[file_digest]
        large = bundle.size_of(path) >= THREAD_BYTES
        async with one_large if large else contextlib.nullcontext():
            data = await asyncio.to_thread(bundle.files.__getitem__, path)
            await objects.put(nc, bucket, name, data)
        uploaded += 1

    await bounded(holder, one)
    data = bundle.manifest()
    if signer is not None:
        data = signing_manifest.signed(protocol.BundleManifest.from_json(data), digest, signer)
    await objects.put(nc, bucket, manifest_name, data)
    return digest, uploaded


async def fetch_listing(nc: NATS, digest: str) -> dict[str, str]:
    """The bundle's listing, every entry checked (a DeployError names a bad one)."""
    try:
        data = await objects.get(nc, protocol.BUNDLES_BUCKET, protocol.bundle_manifest_name(digest))
    except NotFoundError as exc:
        raise NotFoundError(f"bundle {digest[:12]} is not in the lattice's store") from exc
    listing = manifest.decode(data, f"bundle {digest[:12]} manifest")
    if digest_of_listing(listing) != digest:
        raise SuperposeError(f"bundle {digest[:12]}: manifest does not match its digest")
    return listing


async def _fetch_file(nc: NATS, file_digest: str) -> bytes:
    data = await objects.get(nc, protocol.BUNDLES_BUCKET, protocol.file_object_name(file_digest))
    found = await asyncio.to_thread(sha256_hex, data) if len(data) >= THREAD_BYTES else None
    if (found or sha256_hex(data)) != file_digest:
        raise SuperposeError(f"file {file_digest[:12]} failed its SHA-256 check")
    return data


def _write_file(path: Path, data: bytes) -> None:
    """Create ``path`` (never through a link, never over a file) and write it in chunks."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        for start in range(0, len(view), WRITE_CHUNK_BYTES):
            os.write(fd, view[start : start + WRITE_CHUNK_BYTES])
    finally:
        os.close(fd)


async def _unpack_into(nc: NATS, staging: Path, listing: dict[str, str]) -> None:
    """Every file of the listing fetched, checked and written under ``staging``."""
    for folder in sorted({str(Path(p).parent) for p in listing} - {"."}):
        (staging / folder).mkdir(parents=True, exist_ok=True)

    async def one(entry: tuple[str, str]) -> None:
        relpath, file_digest = entry
        data = await _fetch_file(nc, file_digest)
        if len(data) >= THREAD_BYTES:
            await asyncio.to_thread(_write_file, staging / relpath, data)
        else:
            _write_file(staging / relpath, data)

    await bounded(listing.items(), one)


async def _download(nc: NATS, digest: str, cache_dir: Path) -> Path:
    """One try: the manifest, then the files into a fresh staging folder, renamed into
    place only once complete."""
    listing = await fetch_listing(nc, digest)
    target = cache_dir / digest
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=cache_dir))
    try:
        await _unpack_into(nc, staging, listing)
        (staging / COMPLETE_MARKER).write_text(digest)
        seal(staging)  # executors run as other users: they read it, none may change it
        try:
            staging.rename(target)
        except OSError:  # another fetch of the same digest won the race
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


async def materialize(nc: NATS, digest: str, cache_dir: Path, *, within_s: float = 0.0) -> Path:
    """The bundle unpacked under ``cache_dir/<digest>``, fetched and verified if absent.

    A fetch that finds the store unavailable (a failover) is tried again for up to
    ``within_s`` seconds: the call waiting for this bundle must not fail for an
    election it would not notice a few seconds later.
    """
    target = cache_dir / digest
    if (target / COMPLETE_MARKER).exists():
        return target

    def unavailable(error: BaseException, failures: int) -> None:
        if failures == 1:  # once per outage: an election fails a try every half second
            log.warning("bundle %s: the store is unavailable (%r); retrying", digest[:12], error)

    cache_dir.mkdir(parents=True, exist_ok=True)
    return await retry(
        lambda: _download(nc, digest, cache_dir),
        backoff=FETCH_RETRY,
        within_s=within_s,
        retry_on=UNAVAILABLE,
        on_failure=unavailable,
    )
