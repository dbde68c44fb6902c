"""A sandboxed executor's own share of its confinement: limits on what its user code
may take, and no process of a call left once no call runs here.

The agent starts it as a user of its own (``node/sandbox.py``) with ``--sandboxed``;
only then is killing every other process of this uid safe (as the node's user it
would hit the node and its other executors).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import time

from superpose import config

LIMITS = {
    resource.RLIMIT_NPROC: 512,
    resource.RLIMIT_NOFILE: 4096,
    resource.RLIMIT_FSIZE: 4 * 2**30,
}
"""Processes and threads of this uid (one uid per executor, so per executor), open
files, and the largest file it may write (bytes). Not RLIMIT_AS: runtimes that reserve
address space they never use (Go, the JVM, some BLAS builds) fail under it, and the
agent already limits what the executor really uses (``memory``, its resident size)."""

_confined = False
_subreaper = False
"""Orphans of this process's calls are reparented here (``PR_SET_CHILD_SUBREAPER``),
so a call left a process behind exactly when this process still has a child."""
PR_SET_CHILD_SUBREAPER = 36


def confine() -> None:
    """Lower this process's limits (for good: an unprivileged process cannot raise
    them again) and remember that the processes of this uid are ours to end.

    Rootless (a node that is not root, ``bwrap`` in a user namespace) the uid is the
    node's, and RLIMIT_NPROC counts every process of it, the node's included: that
    limit is left alone, and ``kill(-1)`` reaches only the pid namespace's processes.
    """
    global _confined
    rootless = os.getuid() not in config.SANDBOX_UIDS
    for which, wanted in LIMITS.items():
        if rootless and which == resource.RLIMIT_NPROC:
            continue
        _soft, hard = resource.getrlimit(which)
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(which, (value, value))
    # Rootless, only inside a pid namespace of its own (its parent is that namespace's
    # init): anywhere else the node's every process would be this uid's too.
    _confined = not rootless or os.getppid() == 1
    if _confined:
        _become_subreaper()


def _become_subreaper() -> None:
    global _subreaper
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux, or no prctl: kill(-1) after every call
        _subreaper = False


def end_strays() -> None:
    """No call runs here now: SIGKILL every other process of this uid (those calls
    started, even in sessions of their own). Linux never signals the caller itself
    for ``kill(-1)``; a sandbox uid has nothing else on the machine, and a rootless
    executor's pid namespace nothing but its calls' processes (and its init, which
    ``kill(-1)`` spares)."""
    if _confined and (not _subreaper or _descendants_left()):
        with contextlib.suppress(ProcessLookupError):  # none left to kill
            os.kill(-1, signal.SIGKILL)
        if _subreaper:
            _reap(REAP_WITHIN_S)


REAP_WITHIN_S = 0.1
"""How long, at most, ending strays waits to reap them (SIGKILL ends a process within
milliseconds): as their subreaper this process must, or they stay zombies."""


def _reap(within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while _descendants_left() and time.monotonic() < deadline:
        time.sleep(0.001)


def _descendants_left() -> bool:
    """Whether a process a call started still runs: as a subreaper, every one of them
    (double-forked, in a session of its own) is a child here until it ends. Children
    that ended are reaped on the way. One system call when there are none, where
    ``kill(-1)`` visits every process on the machine (about 20 us per call here)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
