"""Content-addressed code bundles.

A bundle is a set of files (relative POSIX path → bytes). Its digest is the
SHA-256 of a canonical listing — one ``<file sha256>  <path>`` line per file,
sorted by path — so the same tree always has the same id wherever it was
built. Each file is stored once in the object store under its own digest,
which is why an unchanged file is never uploaded twice.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from superpose import protocol
from superpose.config import MAX_BUNDLE_BYTES
from superpose.errors import DeployError

SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".venv",
        "venv",
        ".superpose",
        "node_modules",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".tox",
        "build",
        "dist",
    }
)
SKIP_SUFFIXES = (".pyc", ".pyo", ".so.tmp")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Bundle:
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def listing(self) -> dict[str, str]:
        """Path → file digest, the part of a bundle that names its content."""
        return {path: sha256_hex(data) for path, data in sorted(self.files.items())}

    @property
    def digest(self) -> str:
        return digest_of_listing(self.listing)

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())

    def manifest(self) -> bytes:
        return protocol.BundleManifest(files=self.listing).as_json()


def digest_of_listing(listing: dict[str, str]) -> str:
    canonical = "".join(f"{listing[path]}  {path}\n" for path in sorted(listing))
    return sha256_hex(canonical.encode())


def parse_manifest(data: bytes) -> dict[str, str]:
    """The listing in a stored manifest; ProtocolError if it is not one."""
    return protocol.BundleManifest.from_json(data).files


def _skipped(name: str) -> bool:
    return name in SKIP_DIRS or name.startswith(".") or name.endswith(".egg-info")


def from_folder(root: Path) -> Bundle:
    """Every regular file under ``root``, minus caches, VCS and virtualenv folders."""
    bundle = Bundle()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        for name in sorted(filenames):
            if name.endswith(SKIP_SUFFIXES) or name.startswith("."):
                continue
            path = Path(dirpath) / name
            if not path.is_file():
                continue
            data = path.read_bytes()
            total += len(data)
            if total > MAX_BUNDLE_BYTES:
                raise DeployError(
                    f"{root} holds more than {MAX_BUNDLE_BYTES // 2**20} MB of files; "
                    "keep data out of the code folder (use the object store for large inputs)"
                )
            bundle.files[path.relative_to(root).as_posix()] = data
    return bundle


def from_files(root: Path, paths: list[Path]) -> Bundle:
    """The given files, named relative to ``root``."""
    bundle = Bundle()
    for path in sorted(set(paths)):
        bundle.files[path.relative_to(root).as_posix()] = path.read_bytes()
    return bundle


def module_name(relpath: str) -> str:
    """``pkg/mod.py`` → ``pkg.mod``; ``pkg/__init__.py`` → ``pkg``."""
    parts = relpath[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)
