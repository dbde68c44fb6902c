"""Offered bytes in host-local shared memory: a reader on the holder's host maps them.

An offer is pulled over core NATS from anywhere (``lattice/offers.py``), which
costs every byte two trips through the broker. A reader on the same host can
instead map a file the holder wrote once to ``/dev/shm`` (tmpfs: memory, no
disk) and unpickle straight from the mapping: for 50 MB, 25 ms to write and
35-40 ms to map and decode, against 100-130 ms for the NATS pull alone.

The door is the file's name. Each uid keeps its files in
``/dev/shm/superpose-<uid>/``, mode 0711: others may open a file there only if
they know its name, and cannot list the folder. A name holds 128 random bits
and travels only inside the offer's ``Payload``, which only those who may see
the call (by their NATS permissions) see; that is the capability. Files are
mode 0644 because the reader is often another uid (a sandboxed executor, a
caller under its own account). The reader checks what it opens: a regular
file (no symlink), owned by the uid its folder names, of the offered size.

Lifetimes follow the offer's: withdrawn, released or expired, the name stops
working at once; the file is renamed and kept for the next offer (its pages
already there), or unlinked. So a reader must have finished with its mapping
before it releases the offer, and no decoded value may keep a view of it
(``lattice/oob.py`` copies). A process that died
leaves files behind; the next process of the same uid to start offering, and
every node agent as it starts, sweep files whose owner pid is gone (the pid is
the name's prefix; a ``bwrap`` executor, in a pid namespace of its own, also
has a ``/dev/shm`` of its own).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import re
import secrets
import shutil
import stat
import threading
import weakref
from pathlib import Path

from superpose.errors import SuperposeError
from superpose.lattice import oob

log = logging.getLogger("superpose.lattice")

ROOT = Path("/dev/shm")
"""tmpfs on Linux; where it is missing, nothing is written and readers pull over NATS."""
FOLDER_PREFIX = "superpose-"
FOLDER_MODE = 0o711
FILE_MODE = 0o644
KEEP_FREE_FILES = 2
KEEP_FREE_BYTES = 256 * 1024 * 1024
KEEP_FREE_MIN_BYTES = 1024 * 1024
"""Files of ended offers kept for the next ones: writing into pages a file already has
costs a copy; new pages cost a fault and zeroing each (in this VM, about as much
again). At most two, 256 MiB in all, per process."""
_FOLDER = re.compile(r"^superpose-\d+$")
_NAME = re.compile(r"^superpose-(\d+)/(\d+)-[0-9a-f]{32}$")
"""``superpose-<uid>/<pid>-<token>``: anything else in a payload is refused unopened."""


class ShmRefusedError(SuperposeError):
    """A shared-memory name could not be read: wrong, expired, or not on this host.
    The reader falls back to pulling the bytes over NATS."""


class Shelf:
    """This process's shared-memory files: written once per offer, unlinked with it,
    or kept under a new name for the next offer (``KEEP_FREE_*``)."""

    def __init__(self, root: Path = ROOT) -> None:
        self.uid = os.geteuid()
        self.folder_name = f"{FOLDER_PREFIX}{self.uid}"
        self.folder = root / self.folder_name
        self.usable = _own_folder(self.folder, self.uid)
        self._sizes: dict[str, int] = {}  # offered file name → its size
        self._free: list[tuple[int, str]] = []  # (size, name) of files kept for reuse
        self._lock = threading.Lock()  # lane threads offer results while the loop serves
        if self.usable:
            sweep(self.folder)
        # At interpreter exit (a process that never closed its client): its files go.
        weakref.finalize(self, _unlink_names, self.folder, self._sizes, self._free)

    def put(self, data: oob.Encoded | bytearray | memoryview) -> str | None:
        """Write ``data`` to a file; its name (the capability), or None when it cannot
        be written (no tmpfs, full): the offer is then pulled over NATS."""
        if not self.usable:
            return None
        size = len(data)
        fd, name = self._open(size)
        if fd < 0:
            return None
        try:
            if size != self._sizes.get(name, size):
                os.ftruncate(fd, size)  # a kept file: the reader checks the size
            for part in oob.parts_of(data):
                view = memoryview(part).cast("B")
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])
        except OSError as exc:  # ENOSPC: tmpfs is full; never leave a partial file
            log.debug("no shared memory for an offer (%s)", exc)
            os.close(fd)
            _unlink(self.folder / name)
            with self._lock:
                self._sizes.pop(name, None)
            return None
        os.close(fd)
        with self._lock:
            self._sizes[name] = size
        return f"{self.folder_name}/{name}"

    def _open(self, size: int) -> tuple[int, str]:
        """A file to write ``size`` bytes to: the smallest kept one that holds them (its
        pages are already there: no page faults, no zeroing), else a new one."""
        with self._lock:
            fits = [entry for entry in self._free if entry[0] >= size]
            kept = min(fits) if fits else None
            if kept is not None:
                self._free.remove(kept)
                self._sizes[kept[1]] = kept[0]
        if kept is not None:
            try:
                fd = os.open(self.folder / kept[1], os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                return fd, kept[1]
            except OSError:  # swept by someone: make a new one
                with self._lock:
                    self._sizes.pop(kept[1], None)
        name = _new_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self.folder / name, flags, FILE_MODE)
            except FileNotFoundError:  # the folder was removed (a janitor): make it again
                if not _own_folder(self.folder, self.uid):
                    raise
                fd = os.open(self.folder / name, flags, FILE_MODE)
            os.fchmod(fd, FILE_MODE)  # the umask must not narrow it
        except OSError as exc:
            log.debug("no shared memory for an offer (%s)", exc)
            return -1, name
        return fd, name

    def remove(self, name: str | None, reuse: bool = False) -> None:
        """The offer ``name`` ended: its name stops working at once (a reader that
        mapped it keeps its mapping). ``reuse``: every reader has finished with it, so
        the file may be kept, renamed, and written again; else it is unlinked."""
        if name is None or not name.startswith(self.folder_name + "/"):
            return
        old = name.partition("/")[2]
        with self._lock:
            size = self._sizes.pop(old, None)
            keep = (
                reuse
                and size is not None
                and size >= KEEP_FREE_MIN_BYTES
                and len(self._free) < KEEP_FREE_FILES
                and sum(s for s, _ in self._free) + size <= KEEP_FREE_BYTES
            )
        if keep and size is not None:
            new = _new_name()
            try:
                os.rename(self.folder / old, self.folder / new)
            except OSError:
                return
            with self._lock:
                self._free.append((size, new))
            return
        _unlink(self.folder / old)

    def close(self) -> None:
        """Unlink the kept files (the process is stopping)."""
        with self._lock:
            free, self._free = self._free, []
        for _, name in free:
            _unlink(self.folder / name)


def _unlink_names(folder: Path, sizes: dict[str, int], free: list[tuple[int, str]]) -> None:
    for name in [*sizes, *(name for _, name in free)]:
        _unlink(folder / name)


def _new_name() -> str:
    return f"{os.getpid()}-{secrets.token_hex(16)}"


def read(name: str, size: int, root: Path = ROOT) -> mmap.mmap:
    """Map the offered file ``name``: refused unless it is a regular file of ``size``
    bytes owned by the uid its folder names."""
    match = _NAME.match(name)
    if match is None:
        raise ShmRefusedError(f"shared-memory name {name!r} is not one superpose writes")
    if not _alive(int(match.group(2))):
        # Its offer ended with its process, even if the file is not swept yet: what a
        # reader is told then must not hang on when the sweep comes (lineage, say).
        raise ShmRefusedError(f"shared-memory offer {name}: the process holding it is gone")
    try:
        fd = os.open(root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        reason = "no such file" if exc.errno == errno.ENOENT else exc.strerror
        raise ShmRefusedError(
            f"shared-memory offer {name} cannot be opened here ({reason}): "
            "expired, withdrawn, a wrong name, or another host"
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != int(match.group(1)):
            raise ShmRefusedError(
                f"shared-memory offer {name} is not a regular file of uid {match.group(1)}"
            )
        if info.st_size != size or size == 0:
            raise ShmRefusedError(
                f"shared-memory offer {name} holds {info.st_size} bytes, the offer says {size}"
            )
        return mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def sweep(folder: Path) -> int:
    """Unlink files of processes that are gone; how many went."""
    swept = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        pid_text, _, _ = entry.name.partition("-")
        if pid_text.isdigit() and not _alive(int(pid_text)):
            _unlink(Path(entry.path))
            swept += 1
    return swept


def sweep_all(root: Path = ROOT) -> int:
    """Sweep every uid's folder this process may read (a node running as root: its
    sandboxed executors' too, whose uids may not come back soon); how many went."""
    try:
        folders = [e for e in os.scandir(root) if _FOLDER.match(e.name)]
    except OSError:
        return 0
    return sum(sweep(Path(folder.path)) for folder in folders)


def remove_folder(uid: int, root: Path = ROOT) -> None:
    """Remove a uid's folder and what is in it: a sandboxed executor's, once every
    process of its uid is gone (the uid goes back to the pool)."""
    shutil.rmtree(root / f"{FOLDER_PREFIX}{uid}", ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another uid's: alive
        return True
    return True


def _own_folder(folder: Path, uid: int) -> bool:
    """Make (or check) this uid's folder; False if it is not safely ours (someone else
    made it, or it is a symlink): then nothing is written there."""
    if not folder.parent.is_dir():
        return False
    try:
        os.mkdir(folder, FOLDER_MODE)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
        log.warning("%s is not this user's folder: offers go over NATS only", folder)
        return False
    if stat.S_IMODE(info.st_mode) != FOLDER_MODE:
        try:
            os.chmod(folder, FOLDER_MODE)
        except OSError:
            return False
    return True


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
