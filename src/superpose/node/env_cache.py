"""A node's built environments on its own disk, the least recently used removed past a
size limit, never one an executor runs with.

Layout under ``<state dir>/envs``: ``<digest>/site-packages`` and ``<digest>/size``
(bytes on disk, counted once when it arrived). An environment appears only whole: it
is built or unpacked into a ``.tmp-…`` folder beside it and renamed into place, so a
node killed halfway leaves a temp folder (removed at the next start), never a half
environment. When it was last used is its folder's mtime, so the order survives a
restart.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from superpose.support.readonly import seal

log = logging.getLogger("superpose.node")
SITE_PACKAGES = "site-packages"
_SIZE_FILE = "size"
_TEMP_PREFIX = ".tmp-"


class EnvCache:
    def __init__(self, root: Path, limit_bytes: int) -> None:
        self.root = root
        self.limit_bytes = limit_bytes
        self.users: Counter[str] = Counter()
        """Executors running with each environment: those are never removed."""
        self._sizes: dict[str, int] = {}

    def open(self) -> None:
        """Find what earlier runs left: whole environments stay, temp folders go."""
        self.root.mkdir(parents=True, exist_ok=True)
        for entry in self.root.iterdir():
            if entry.name.startswith(_TEMP_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
            elif (entry / _SIZE_FILE).is_file():
                self._sizes[entry.name] = int((entry / _SIZE_FILE).read_text() or 0)

    def built(self) -> list[str]:
        """Digests held here, least recently used first."""
        return sorted(self._sizes, key=self._last_used)

    def site_packages(self, digest: str) -> Path | None:
        """Where a held environment's packages are (and it counts as used now), or None."""
        if digest not in self._sizes:
            return None
        folder = self.root / digest
        os.utime(folder)
        return folder / SITE_PACKAGES

    def staging(self, digest: str) -> Path:
        """An empty folder to build or unpack into; ``SITE_PACKAGES`` goes inside it."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{digest[:12]}-", dir=self.root))

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def adopt(self, digest: str, staged: Path) -> Path:
        """Move a staged environment into place (one rename); returns its site-packages."""
        size = _disk_size(staged)
        (staged / _SIZE_FILE).write_text(str(size))
        seal(staged)  # executors run as other users: they read it, none may change it
        os.rename(staged, self.root / digest)
        self._sizes[digest] = size
        self.evict(keep=digest)
        return self.root / digest / SITE_PACKAGES

    def use(self, digest: str) -> None:
        self.users[digest] += 1

    def release(self, digest: str) -> None:
        self.users[digest] -= 1
        if self.users[digest] <= 0:
            del self.users[digest]
            self.evict()

    def evict(self, keep: str = "") -> list[str]:
        """Remove least recently used environments no executor uses until the rest fit."""
        removed: list[str] = []
        total = sum(self._sizes.values())
        for digest in self.built():
            if total <= self.limit_bytes:
                break
            if digest == keep or self.users[digest] > 0:
                continue
            total -= self._sizes.pop(digest)
            shutil.rmtree(self.root / digest, ignore_errors=True)
            removed.append(digest)
            log.info("evicted environment %s (cache over %d MB)", digest[:12], self._limit_mb)
        if total > self.limit_bytes:
            log.warning(
                "environments in use take %d MB, over the cache limit of %d MB",
                total // 2**20,
                self._limit_mb,
            )
        return removed

    @property
    def _limit_mb(self) -> int:
        return self.limit_bytes // 2**20

    def _last_used(self, digest: str) -> float:
        try:
            return (self.root / digest).stat().st_mtime
        except FileNotFoundError:
            return time.time()


def _disk_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in folder.rglob("*"):
        stat = path.lstat()
        if path.is_file() and (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total
