"""A start-up hook that fails until ``$HOOK_DIR/fixed`` exists, for tests/test_on_start.py."""

from __future__ import annotations

import os
from pathlib import Path

import superpose as sp


@sp.on_start
def connect_db() -> None:
    folder = Path(os.environ["HOOK_DIR"])
    with open(folder / "hook", "a") as out:
        out.write(f"{os.getpid()}\n")
    if not (folder / "fixed").exists():
        raise ConnectionError("database unreachable")


@sp.function
def query() -> int:
    with open(Path(os.environ["HOOK_DIR"]) / "calls", "a") as out:
        out.write(f"{os.getpid()}\n")
    return os.getpid()
