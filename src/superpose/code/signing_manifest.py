"""Signatures carried by a bundle's manifest: who let this code run on the lattice.

A manifest's bytes are not part of the bundle's digest (its listing is), so the
signatures ride in the manifest itself: a node reads them with the listing it
fetches anyway, at no extra round trip when it fetches the bundle. Each signature is
a deployer key's over ``protocol.bundle_statement(digest)``.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.code.bundle import digest_of_listing
from superpose.errors import NotFoundError, SuperposeError
from superpose.lattice import objects, signing
from superpose.lattice.signing import Signer


def signed(manifest: protocol.BundleManifest, digest: str, signer: Signer) -> bytes:
    """The manifest's bytes with ``signer``'s signature added to the others."""
    key = signer.public_key
    sig = signer.sign(protocol.bundle_statement(digest, key))
    return protocol.BundleManifest(manifest.files, {**manifest.signatures, key: sig}).as_json()


async def fetch(nc: NATS, digest: str) -> protocol.BundleManifest:
    """The stored manifest, once its listing is known to hash to ``digest``."""
    try:
        data = await objects.get(nc, protocol.BUNDLES_BUCKET, protocol.bundle_manifest_name(digest))
    except NotFoundError as exc:
        raise NotFoundError(f"bundle {digest[:12]} is not in the lattice's store") from exc
    manifest = protocol.BundleManifest.from_json(data)
    if digest_of_listing(manifest.files) != digest:
        raise SuperposeError(f"bundle {digest[:12]}: manifest does not match its digest")
    return manifest


async def add_signature(nc: NATS, digest: str, signer: Signer) -> None:
    """Sign a bundle stored before (by anyone): rewrite its manifest with our signature,
    unless it already carries a valid one of ours."""
    manifest = await fetch(nc, digest)
    key = signer.public_key
    have = manifest.signatures.get(key, "")
    if have and signing.verify(key, protocol.bundle_statement(digest, key), have):
        return
    data = signed(manifest, digest, signer)
    await objects.put(nc, protocol.BUNDLES_BUCKET, protocol.bundle_manifest_name(digest), data)
