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


def end_strays() -> None:
    """No call runs here now: SIGKILL every other process of this uid (those calls
    started, even in sessions of their own). Linux never signals the caller itself
    for ``kill(-1)``; a sandbox uid has nothing else on the machine, and a rootless
    executor's pid namespace nothing but its calls' processes (and its init, which
    ``kill(-1)`` spares)."""
    if _confined:
        with contextlib.suppress(ProcessLookupError):  # none left to kill
            os.kill(-1, signal.SIGKILL)
