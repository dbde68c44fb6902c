"""A bundle's manifest: the one place its listing becomes bytes and bytes a listing.

The manifest (``bundle/<digest>`` in the bundles store) is the path → SHA-256
listing of a bundle. Anyone who can write to the store can write one, so decoding
checks every entry (``paths.py``) before a node creates a single file from it, and
fails as one DeployError naming the entry, never as an internal error. Whatever is
added to a manifest later (a signature) is added here.
"""

from __future__ import annotations

from superpose import protocol
from superpose.code import paths
from superpose.config import MAX_BUNDLE_FILES
from superpose.errors import DeployError


def encode(listing: dict[str, str]) -> bytes:
    return protocol.BundleManifest(files=listing).as_json()


def decode(data: bytes, what: str = "bundle manifest") -> dict[str, str]:
    """The listing in a stored manifest, every path and digest checked.

    A DeployError saying what is wrong: the bytes are not a manifest at all, an entry
    could not be unpacked safely (naming it), or there are more files than a bundle takes.
    """
    try:
        listing = protocol.BundleManifest.from_json(data).files
    except protocol.ProtocolError as exc:
        raise DeployError(f"{what} is malformed: {exc}") from None
    return check(listing, what)


def check(listing: dict[str, str], what: str) -> dict[str, str]:
    """``listing`` if every entry can be unpacked under the bundle's folder."""
    if len(listing) > MAX_BUNDLE_FILES:
        raise DeployError(
            f"{what} lists {len(listing)} files, more than the limit of {MAX_BUNDLE_FILES}"
        )
    for path, digest in listing.items():
        paths.require(path, what)
        paths.require_digest(path, digest, what)
    paths.require_layout(listing, what)
    return listing
