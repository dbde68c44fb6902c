"""Bundles in the lattice's object store: upload what is missing, fetch and verify."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.code import signing_manifest
from superpose.code.bundle import Bundle, digest_of_listing, parse_manifest, sha256_hex
from superpose.errors import NotFoundError, SuperposeError
from superpose.lattice import objects
from superpose.lattice.signing import Signer
from superpose.support.retry import THROUGH_ELECTION, retry

log = logging.getLogger("superpose.code")

COMPLETE_MARKER = ".superpose-complete"
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


async def upload(nc: NATS, bundle: Bundle, *, signer: Signer | None = None) -> tuple[str, int]:
    """Store the bundle; returns its digest and how many files had to be uploaded.

    With ``signer``, its signature goes into the manifest (added to those already there
    when the bundle was stored before): nodes run code a trusted key signed.
    """
    digest = bundle.digest
    bucket = protocol.BUNDLES_BUCKET
    manifest_name = protocol.bundle_manifest_name(digest)
    if await objects.exists(nc.jetstream(), bucket, manifest_name):
        if signer is not None:
            await signing_manifest.add_signature(nc, digest, signer)
        return digest, 0
    listing = bundle.listing
    by_digest = {listing[path]: bundle.files[path] for path in listing}
    present = await asyncio.gather(
        *(objects.exists(nc.jetstream(), bucket, protocol.file_object_name(d)) for d in by_digest)
    )
    missing = [d for d, ok in zip(by_digest, present, strict=True) if not ok]
    for file_digest in missing:
        await objects.put(
            nc, bucket, protocol.file_object_name(file_digest), by_digest[file_digest]
        )
    manifest = bundle.manifest()
    if signer is not None:
        manifest = signing_manifest.signed(
            protocol.BundleManifest.from_json(manifest), digest, signer
        )
    await objects.put(nc, bucket, manifest_name, manifest)
    return digest, len(missing)


async def fetch_listing(nc: NATS, digest: str) -> dict[str, str]:
    try:
        data = await objects.get(nc, protocol.BUNDLES_BUCKET, protocol.bundle_manifest_name(digest))
    except NotFoundError as exc:
        raise NotFoundError(f"bundle {digest[:12]} is not in the lattice's store") from exc
    listing = parse_manifest(data)
    if digest_of_listing(listing) != digest:
        raise SuperposeError(f"bundle {digest[:12]}: manifest does not match its digest")
    return listing


async def _fetch_file(nc: NATS, file_digest: str) -> bytes:
    data = await objects.get(nc, protocol.BUNDLES_BUCKET, protocol.file_object_name(file_digest))
    if sha256_hex(data) != file_digest:
        raise SuperposeError(f"file {file_digest[:12]} failed its SHA-256 check")
    return data


async def _fetch_all(nc: NATS, digest: str) -> tuple[dict[str, str], list[bytes]]:
    listing = await fetch_listing(nc, digest)
    return listing, await asyncio.gather(*(_fetch_file(nc, d) for d in listing.values()))


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

    listing, contents = await retry(
        lambda: _fetch_all(nc, digest),
        backoff=FETCH_RETRY,
        within_s=within_s,
        retry_on=UNAVAILABLE,
        on_failure=unavailable,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=cache_dir))
    try:
        for relpath, data in zip(listing, contents, strict=True):
            path = staging / relpath
            if ".." in Path(relpath).parts or Path(relpath).is_absolute():
                raise SuperposeError(f"bundle {digest[:12]} has an unsafe path {relpath!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (staging / COMPLETE_MARKER).write_text(digest)
        try:
            staging.rename(target)
        except OSError:  # another fetch of the same digest won the race
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
