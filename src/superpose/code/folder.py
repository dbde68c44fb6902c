"""Files on disk becoming a bundle: looked at before read, never followed out, hashed as streams.

A deploy reads a folder it does not control (a clone, a download, a shared
drive), so nothing in it is trusted:

- **Links are never followed out of the folder.** A symbolic link whose target
  (after every link on the way) lies inside the folder is stored as a copy of
  that file under the link's own name: the manifest lists files only, and the
  store keeps each content once, so the bytes are uploaded once. A link that
  points outside (absolute, or through ``..``), nowhere, or at a folder is
  refused, naming the link and where it points.
- **Limits are checked from ``lstat`` before anything is read**: one file over
  ``MAX_BUNDLE_BYTES`` is refused at once (a 2 GB sparse file costs one
  ``lstat``), and so is a folder of more than ``MAX_BUNDLE_FILES`` files or bytes.
- **Every name is checked** (``paths.py``): a name that is not UTF-8, too long or
  too deep is a DeployError naming it.
- **Files are hashed as streams** in ``CHUNK_BYTES`` reads and read whole only to
  be uploaded, one at a time, and only if the store lacks them; a file that
  changed since it was hashed is refused, not uploaded under the wrong digest.

Sockets, FIFOs and devices are left out, as before: they are not code, and
reading a FIFO would wait forever.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from superpose.code import paths
from superpose.config import MAX_BUNDLE_BYTES, MAX_BUNDLE_DEPTH, MAX_BUNDLE_FILES
from superpose.errors import DeployError

CHUNK_BYTES = 1024 * 1024
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
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
MB = 2**20


@dataclass(frozen=True)
class Entry:
    """A file of the bundle: its bundle path, the file to read and its ``lstat`` size."""

    path: str
    source: Path
    size: int


def _skipped_dir(name: str) -> bool:
    return name in SKIP_DIRS or name.startswith(".") or name.endswith(".egg-info")


def _skipped_file(name: str) -> bool:
    return name.endswith(SKIP_SUFFIXES) or name.startswith(".")


def _walk(root: Path, rel: str = "") -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(bundle path, entry) of every non-folder under ``root`` that is not skipped.

    Folders are entered only if they are real folders (``os.scandir`` does not
    follow links unless asked), in name order, and only while a file in them could
    still be a valid bundle path.
    """
    with os.scandir(root / rel if rel else root) as found:
        entries = sorted(found, key=lambda e: e.name)
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_dir(follow_symlinks=False):
            if not _skipped_dir(entry.name):
                _check_folder(root, path)
                yield from _walk(root, path)
        elif not _skipped_file(entry.name):
            yield path, entry


def _check_folder(root: Path, path: str) -> None:
    paths.require(path, str(root))
    depth = path.count("/") + 1
    if depth >= MAX_BUNDLE_DEPTH:
        raise DeployError(
            f"{root}: folder {paths.shown(path)} nests {depth} deep; a file in it would "
            f"pass the limit of {MAX_BUNDLE_DEPTH}"
        )


def scan(root: Path) -> list[Entry]:
    """The files a deploy of ``root`` takes, checked; nothing is read."""
    root = root.resolve()
    found: list[Entry] = []
    walked = _walk(root)
    for path, dir_entry in walked:
        if len(found) == MAX_BUNDLE_FILES:
            total = len(found) + 1 + sum(1 for _ in walked)
            raise DeployError(
                f"{root} holds {total} files, more than the limit of {MAX_BUNDLE_FILES} "
                "a bundle takes; leave data out of the code folder (use the object store)"
            )
        paths.require(path, str(root))
        entry = _entry(root, path, Path(dir_entry.path))
        if entry is not None:
            found.append(entry)
    check_total(root, found)
    return found


def of_files(root: Path, files: list[Path]) -> list[Entry]:
    """The given files, named by their path under ``root``, checked; nothing is read."""
    root = root.resolve()
    found: list[Entry] = []
    for file in sorted(set(files)):
        try:
            path = file.relative_to(root).as_posix()
        except ValueError:
            raise DeployError(f"{file} is not under {root}, the bundle's folder") from None
        paths.require(path, str(root))
        entry = _entry(root, path, file)
        if entry is None:
            raise DeployError(f"{file} is not a regular file")
        found.append(entry)
    if len(found) > MAX_BUNDLE_FILES:
        raise DeployError(
            f"{root}: {len(found)} files, more than the limit of {MAX_BUNDLE_FILES} a bundle takes"
        )
    check_total(root, found)
    return found


def _entry(root: Path, path: str, file: Path) -> Entry | None:
    """The entry for one file (a link's target if it stays inside), None for a socket,
    FIFO or device, which are left out."""
    info = file.lstat()
    source = file
    if stat.S_ISLNK(info.st_mode):
        source, info = _link_target(root, path, file)
    elif not stat.S_ISREG(info.st_mode):
        return None
    _check_size(path, info.st_size)
    return Entry(path, source, info.st_size)


def _link_target(root: Path, path: str, link: Path) -> tuple[Path, os.stat_result]:
    """Where a link leads, if that is a regular file inside the folder."""
    points_at = os.readlink(link)
    shown = f"{paths.shown(path)} is a symbolic link to {points_at!r}"
    target = Path(os.path.realpath(link))
    if not target.is_relative_to(root):
        raise DeployError(
            f"{shown}, outside {root}: links out of the folder are not followed "
            "(copy the file into the folder instead)"
        )
    try:
        info = target.lstat()
    except OSError:
        raise DeployError(f"{shown}, which does not exist") from None
    if stat.S_ISLNK(info.st_mode):  # realpath stops where links go round in a circle
        raise DeployError(f"{shown}, which leads round in a loop of links")
    if not stat.S_ISREG(info.st_mode):
        raise DeployError(
            f"{shown}, which is not a regular file: only links to files are stored "
            "(as a copy of the file); copy the folder instead"
        )
    return target, info


def _check_size(path: str, size: int) -> None:
    if size > MAX_BUNDLE_BYTES:
        raise DeployError(
            f"{paths.shown(path)} is {size / MB:.1f} MB, more than the "
            f"{MAX_BUNDLE_BYTES // MB} MB limit of a whole bundle; put large inputs in the "
            "object store"
        )


def check_total(root: Path, entries: list[Entry]) -> None:
    total = sum(e.size for e in entries)
    if total > MAX_BUNDLE_BYTES:
        largest = sorted(entries, key=lambda e: e.size, reverse=True)[:3]
        named = ", ".join(f"{paths.shown(e.path)} {e.size / MB:.1f} MB" for e in largest)
        raise DeployError(
            f"{root} holds {total / MB:.1f} MB of files, more than the limit of "
            f"{MAX_BUNDLE_BYTES // MB} MB (largest: {named}); keep data out of the code "
            "folder (use the object store for large inputs)"
        )


def _open(entry: Entry) -> int:
    """A descriptor of the entry's file, if it is still the regular file of that size."""
    try:
        fd = os.open(entry.source, _OPEN_FLAGS)
    except OSError as exc:
        raise DeployError(f"{paths.shown(entry.path)} cannot be read: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
        os.close(fd)
        raise DeployError(f"{paths.shown(entry.path)} changed while being deployed; deploy again")
    return fd


def hash_file(entry: Entry) -> str:
    """The file's SHA-256, read in ``CHUNK_BYTES`` pieces."""
    digest = hashlib.sha256()
    read = 0
    fd = _open(entry)
    try:
        while chunk := os.read(fd, CHUNK_BYTES):
            digest.update(chunk)
            read += len(chunk)
    finally:
        os.close(fd)
    if read != entry.size:
        raise DeployError(f"{paths.shown(entry.path)} changed while being deployed; deploy again")
    return digest.hexdigest()


def read_file(entry: Entry, digest: str) -> bytes:
    """The file's bytes, if they still hash to ``digest``."""
    fd = _open(entry)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(entry.size + 1)
    finally:
        os.close(fd)
    if hashlib.sha256(data).hexdigest() != digest:
        raise DeployError(f"{paths.shown(entry.path)} changed while being deployed; deploy again")
    return data


class DiskFiles(Mapping[str, bytes]):
    """A bundle's files still on disk: digests and sizes known, bytes read on access."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = {e.path: e for e in entries}
        self.digests = {e.path: hash_file(e) for e in entries}
        self.size = sum(e.size for e in entries)

    def __getitem__(self, path: str) -> bytes:
        return read_file(self.entries[path], self.digests[path])

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)
