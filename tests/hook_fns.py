"""Start-up hooks that work, for tests/test_on_start.py (script mode).

Each hook notes its run in ``$HOOK_DIR/runs`` (the tests give each test's calls a
``HOOK_DIR`` of their own, so they also get executors of their own)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import superpose as sp

LOADED: dict[str, str] = {}


def note(what: str) -> None:
    folder = os.environ.get("HOOK_DIR")
    if folder:
        with open(Path(folder) / "runs", "a") as out:
            out.write(f"{what} {os.getpid()} {os.getcwd()}\n")


@sp.on_start
def load_model() -> None:
    note("sync")
    LOADED["model"] = "weights"


@sp.on_start
async def open_pool() -> None:
    await asyncio.sleep(0)
    note("async")
    LOADED["pool"] = "open"


@sp.function
def predict(x: int) -> dict[str, object]:
    return {"pid": os.getpid(), "loaded": dict(LOADED), "x": x}


@sp.function
async def apredict(x: int) -> dict[str, object]:
    return {"pid": os.getpid(), "loaded": dict(LOADED), "x": x}
