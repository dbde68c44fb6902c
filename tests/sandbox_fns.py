"""Functions the sandbox tests run (tests/test_sandbox.py): they look at what they may
do on a node, and try what they must not."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import superpose as sp


@sp.function
def identity() -> dict[str, Any]:
    """Who the call runs as, and what it was given."""
    tmp = os.environ.get("TMPDIR", "")
    info = os.stat(tmp) if tmp else None
    return {
        "pid": os.getpid(),
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "sid": os.getsid(0),
        "pgid": os.getpgid(0),
        "env": dict(os.environ),
        "tmp": tmp,
        "tmp_mode": stat.S_IMODE(info.st_mode) if info else None,
        "tmp_owner": info.st_uid if info else None,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "nproc": resource.getrlimit(resource.RLIMIT_NPROC),
        "fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
        "cwd": os.getcwd(),
    }


@sp.function
def write_tmp(text: str) -> str:
    """Writes in its private temporary folder, which it may."""
    path = Path(os.environ["TMPDIR"]) / "note.txt"
    path.write_text(text)
    return path.read_text()


def _children(n: int, tag: str) -> list[int]:
    """``n`` sleeps, every third in a session of its own (as a daemon would)."""
    return [subprocess.Popen(["sleep", tag], start_new_session=i % 3 == 0).pid for i in range(n)]


@sp.function
def leave_children(n: int, tag: str) -> list[int]:
    """Returns normally, leaving ``n`` processes behind."""
    return _children(n, tag)


@sp.function(timeout=3)
def children_then_hang(n: int, tag: str) -> None:
    """Starts ``n`` processes, then runs past its timeout."""
    _children(n, tag)
    time.sleep(60)


@sp.function(memory=300)
def children_then_hog(n: int, tag: str) -> None:
    """Starts ``n`` processes, waits until told, then takes more memory than allowed."""
    _children(n, tag)
    blocks = [bytearray(1024 * 1024) for _ in range(600)]
    time.sleep(60)
    print(len(blocks))


@sp.function
def overwrite_cached(module: str, text: str) -> list[str]:
    """The attack: rewrite another app's cached module on this node (its bundle sits
    beside this one's in the node's bundle cache). Returns what each try raised."""
    outcomes = []
    for path in sorted(Path.cwd().parent.glob(f"*/{module}")):
        try:
            path.write_text(text)
            outcomes.append(f"{path}: written")
        except OSError as exc:
            outcomes.append(f"{path}: {type(exc).__name__}")
        try:
            path.unlink()
            outcomes.append(f"{path}: removed")
        except OSError as exc:
            outcomes.append(f"{path}: {type(exc).__name__}")
    return outcomes


@sp.function
def read_file(path: str) -> str:
    return Path(path).read_text()


@sp.function
def crash() -> None:
    os._exit(3)


@sp.function
def looks_around(paths: list[str]) -> dict[str, Any]:
    """What a rootless executor can see of its node: each path read (or why not), and
    the processes in its view."""
    seen: dict[str, str] = {}
    for path in paths:
        try:
            Path(path).read_bytes()
            seen[path] = "read"
        except OSError as exc:
            seen[path] = type(exc).__name__
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return {"paths": seen, "pids": pids, "me": os.getpid()}
