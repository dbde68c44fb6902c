"""A sandboxed executor's own share of its confinement: limits on what its user code
may take, and no process of a call left once no call runs here.

The agent starts it as a user of its own (``node/sandbox.py``) with ``--sandboxed``;
only then is killing every other process of this uid safe (as the node's user it
would hit the node and its other executors).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal

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


def confine() -> None:
    """Lower this process's limits (for good: an unprivileged process cannot raise
    them again) and remember that the processes of this uid are ours to end."""
    global _confined
    for which, wanted in LIMITS.items():
        _soft, hard = resource.getrlimit(which)
        value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(which, (value, value))
    _confined = True


def end_strays() -> None:
    """No call runs here now: SIGKILL every other process of this uid (those calls
    started, even in sessions of their own). Linux never signals the caller itself
    for ``kill(-1)``; a sandbox uid has nothing else on the machine."""
    if _confined:
        with contextlib.suppress(ProcessLookupError):  # none left to kill
            os.kill(-1, signal.SIGKILL)
