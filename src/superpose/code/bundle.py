"""Content-addressed code bundles.

A bundle is a set of files (relative POSIX path → bytes). Its digest is the
SHA-256 of a canonical listing — one ``<file sha256>  <path>`` line per file,
sorted by path — so the same tree always has the same id wherever it was
built. Each file is stored once in the object store under its own digest,
which is why an unchanged file is never uploaded twice.

A bundle built from disk (``from_folder``, ``from_files``) keeps its files there:
``folder.py`` checks them before anything is read and hashes them as streams, and
``files[path]`` reads one when it is needed (to discover functions in it, or to
upload it if the store lacks it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from superpose.code import folder, manifest
from superpose.code.folder import SKIP_DIRS, SKIP_SUFFIXES

__all__ = ["SKIP_DIRS", "SKIP_SUFFIXES", "Bundle", "from_files", "from_folder"]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Bundle:
    files: Mapping[str, bytes] = field(default_factory=dict)
    """Path → bytes: a dict, or ``folder.DiskFiles`` reading each file on access."""

    @property
    def listing(self) -> dict[str, str]:
        """Path → file digest, the part of a bundle that names its content."""
        if isinstance(self.files, folder.DiskFiles):
            return dict(sorted(self.files.digests.items()))
        return {path: sha256_hex(data) for path, data in sorted(self.files.items())}

    @property
    def digest(self) -> str:
        return digest_of_listing(self.listing)

    @property
    def size(self) -> int:
        if isinstance(self.files, folder.DiskFiles):
            return self.files.size
        return sum(len(data) for data in self.files.values())

    def size_of(self, path: str) -> int:
        """One file's size, without reading it if it is still on disk."""
        if isinstance(self.files, folder.DiskFiles):
            return self.files.entries[path].size
        return len(self.files[path])

    def manifest(self) -> bytes:
        return manifest.encode(self.listing)


def digest_of_listing(listing: dict[str, str]) -> str:
    canonical = "".join(f"{listing[path]}  {path}\n" for path in sorted(listing))
    return sha256_hex(canonical.encode())


def parse_manifest(data: bytes) -> dict[str, str]:
    """The listing in a stored manifest, every entry checked (``manifest.decode``)."""
    return manifest.decode(data)


def from_folder(root: Path) -> Bundle:
    """Every regular file under ``root``, minus caches, VCS and virtualenv folders."""
    return Bundle(folder.DiskFiles(folder.scan(root)))


def from_files(root: Path, paths: list[Path]) -> Bundle:
    """The given files, named relative to ``root``."""
    return Bundle(folder.DiskFiles(folder.of_files(root, paths)))


def module_name(relpath: str) -> str:
    """``pkg/mod.py`` → ``pkg.mod``; ``pkg/__init__.py`` → ``pkg``."""
    parts = relpath[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)
