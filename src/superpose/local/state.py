"""The state folder of ``superpose up``: who holds it, and where its lattice is.

While ``up`` runs it holds an exclusive ``flock`` on ``up.lock`` in the home
folder (the kernel drops the lock if the process dies, so a crash never leaves a
stale lock behind), and ``lattice.json`` tells every other command where the
lattice is and which processes make it up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from superpose import config
from superpose.errors import UserError
from superpose.security.files import private_dir, write_private

if TYPE_CHECKING:
    from superpose.local.lattice import LocalLattice

LOCK_NAME = "up.lock"


def _lock_path(home: Path) -> Path:
    return home / LOCK_NAME


def lock_is_held(home: Path) -> bool:
    """True while some ``superpose up`` owns this home."""
    path = _lock_path(home)
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def read_state(home: Path) -> dict[str, Any] | None:
    """The running lattice's state file, or None when no ``up`` is alive in ``home``."""
    path = config.state_file(home)
    if not path.exists() or not lock_is_held(home):
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return state


def find_running_lattice(home: Path) -> str | None:
    state = read_state(home)
    return str(state["lattice"]) if state and state.get("ready") else None


def already_running(home: Path) -> UserError:
    state = read_state(home) or {}
    return UserError(
        f"a lattice is already running in {home} "
        f"(lattice {state.get('lattice') or '?'}, gateway {state.get('gateway') or '-'}); "
        "stop it with `superpose down`"
    )


@contextlib.contextmanager
def exclusive_home(home: Path) -> Iterator[None]:
    """Hold the home's lock for the life of ``up``; refuse if another ``up`` has it."""
    private_dir(home)
    handle: IO[str] = open(_lock_path(home), "a+")  # noqa: SIM115 - held for the block
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        # The state file belongs to the ``up`` that holds the lock: leave it alone.
        raise already_running(home) from None
    try:
        yield
    finally:
        config.state_file(home).unlink(missing_ok=True)
        handle.close()


def write_state(home: Path, lattice: LocalLattice, *, ready: bool = True) -> None:
    """``lattice.json``: where the lattice is and which processes make it up.

    Written once as soon as ``up`` holds the lock (``ready: false``, so ``down``
    can stop a lattice that is still starting), again when everything answers,
    and again whenever a child is restarted (its pid changed). Each process is
    recorded with its start time so a recycled pid is never mistaken for it.
    """
    pids = lattice.pids()
    state = {
        "ready": ready,
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "lattice": lattice.url,
        "gateway": lattice.gateway_url,
        "tls_ca": str(lattice.tls_ca) if lattice.tls_ca else None,
        "pids": pids,
        "starts": {str(pid): process_start(pid) for pid in [os.getpid(), *pids.values()]},
        "started": time.time(),
    }
    # Owner only: it names the lattice and its processes, next to the credentials.
    write_private(config.state_file(home), json.dumps(state, indent=2))


def process_start(pid: int) -> int | None:
    """When the process started (clock ticks after boot); None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # exited, waiting to be reaped: it runs nothing any more
        return None
    return int(fields[19])  # field 22 of proc(5), counting from the state (field 3)
