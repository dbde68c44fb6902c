"""Object references: put/get of a big value, and many readers of one Ref.

``.venv/bin/python bench/refs.py [--mb 50] [--rounds 3] [--out FILE.json]``

Starts a local lattice (2 nodes, 4 slots each) and, in each round, times:

- ``put``/``get`` of an ephemeral value (read by another process, so the bytes are
  pulled over the lattice, not read from the putter's memory), and of a durable one;
- a call given a Ref to the value against one given the value itself;
- a function that returns a Ref against one that returns the bytes (the caller reads);
- 8 durable calls at once reading one Ref, against 8 given the value itself.

Prints the median and range of each cell over the rounds, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import superpose as sp  # noqa: E402
from bench import ref_fns  # noqa: E402
from superpose.client import session  # noqa: E402
from superpose.local.lattice import LocalLattice  # noqa: E402
from superpose.security import lookup  # noqa: E402

READERS = 8


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


READER = """
import pickle, sys, time
import superpose as sp
sp.connect(show_logs=False)
for line in sys.stdin:
    ref = pickle.loads(bytes.fromhex(line.strip()))
    started = time.perf_counter()
    sp.get(ref)
    print(time.perf_counter() - started, flush=True)
"""


class Reader:
    """Another process that reads Refs on request: a read from this process would be
    answered from the putter's own memory."""

    def __init__(self, url: str) -> None:
        creds = lookup.registered(url)
        env = {**os.environ, "SUPERPOSE_LATTICE": url}
        if creds is not None:
            env["SUPERPOSE_CREDS"] = str(creds)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def get(self, ref: sp.Ref) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(pickle.dumps(ref).hex() + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def one_round(putter: sp.Client, reader: Reader, size: int) -> dict[str, float]:
    value = b"v" * size
    out: dict[str, float] = {}
    session.set_default(putter)
    ref: sp.Ref | None = None

    def put() -> None:
        nonlocal ref
        ref = sp.put(value + str(time.time()).encode())  # a new object each round

    out["put ephemeral"] = timed(put)
    assert ref is not None
    out["get ephemeral (other process)"] = reader.get(ref)
    durable: sp.Ref | None = None

    def put_durable() -> None:
        nonlocal durable
        durable = sp.put(value + str(time.time()).encode(), durable=True)

    out["put durable"] = timed(put_durable)
    out["get durable (other process)"] = reader.get(durable)
    out["call with Ref argument"] = timed(lambda: ref_fns.length.remote(ref))
    out["call with bytes argument"] = timed(lambda: ref_fns.length.remote(value))
    out["result Ref + get"] = timed(lambda: sp.get(ref_fns.make.remote(size)))
    out["result bytes"] = timed(lambda: ref_fns.make_bytes.remote(size))
    fresh = sp.put(value + b"readers" + str(time.time()).encode())
    out[f"{READERS} readers of one Ref"] = timed(
        lambda: sp.gather(*(ref_fns.length.spawn(fresh) for _ in range(READERS)))
    )
    out[f"{READERS} calls given the bytes"] = timed(
        lambda: sp.gather(*(ref_fns.length.spawn(value) for _ in range(READERS)))
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    ns = parser.parse_args()
    size = ns.mb * 1_000_000
    rounds: list[dict[str, float]] = []
    with local_lattice() as url:
        putter = sp.connect(url, show_logs=False)
        reader = Reader(url)
        try:
            session.set_default(putter)
            one_round(putter, reader, 1_000_000)  # warm: bundle, executors on both nodes
            for _ in range(ns.rounds):
                rounds.append(one_round(putter, reader, size))
        finally:
            reader.close()
            putter.close()
    report(rounds, ns.mb, ns.out)


@contextmanager
def local_lattice(workers: int = 2, slots: int = 4) -> Iterator[str]:
    """A lattice of its own (``LocalLattice``, its loop in a thread): its URL; stopped
    and its folder removed at the end."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        lattice = LocalLattice(state_dir=Path(tmp), workers=workers, slots=slots)
        url = asyncio.run_coroutine_threadsafe(lattice.start(), loop).result()
        try:
            yield url
        finally:
            asyncio.run_coroutine_threadsafe(lattice.stop(), loop).result()


def report(rounds: list[dict[str, float]], mb: int, out: Path | None) -> None:
    cells = {
        name: {
            "median_s": statistics.median(r[name] for r in rounds),
            "min_s": min(r[name] for r in rounds),
            "max_s": max(r[name] for r in rounds),
        }
        for name in rounds[0]
    }
    print(f"{mb} MB, {len(rounds)} rounds (median [min-max] seconds)")
    for name, cell in cells.items():
        print(f"  {name:32} {cell['median_s']:.3f} [{cell['min_s']:.3f}-{cell['max_s']:.3f}]")
    if out is not None:
        out.write_text(json.dumps({"mb": mb, "rounds": rounds, "cells": cells}, indent=2))


if __name__ == "__main__":
    main()
