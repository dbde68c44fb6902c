"""Soak (``make soak``, not CI): minutes of mixed calls while nodes are killed.

Every call either returns its correct result or, for a function that raises,
the expected error; calls on killed nodes are retried. The test prints the
counts. Duration: ``SUPERPOSE_SOAK_S`` seconds (default 180).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import fns
import superpose as sp
from conftest import Lattice, client_on, start_lattice, stop_lattice

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]  # minutes by design
KILL_EVERY_S = 20.0


@contextmanager
def _lattice(tmp_path: Path) -> Iterator[Lattice]:
    handle = start_lattice(tmp_path, gateway=False)
    try:
        with client_on(handle):
            yield handle
    finally:
        stop_lattice(handle)


def _killer(handle: Lattice, stop: threading.Event, kills: Counter[str]) -> None:
    while not stop.wait(KILL_EVERY_S):
        children = [c for c in handle.lattice.children if c.process is not None]
        victim = random.choice(children)
        assert victim.process is not None
        try:
            os.kill(victim.process.pid, signal.SIGKILL)
            kills["nodes killed"] += 1
        except ProcessLookupError:
            continue


def _one_round(counts: Counter[str]) -> None:
    square = fns.square.with_options(retries=3)
    n = random.randint(10, 200)
    assert list(square.map(range(n))) == [x * x for x in range(n)]
    counts["map items"] += n
    assert fns.fib.with_options(retries=3).remote(8) == 21
    counts["fan-out trees"] += 1
    try:
        fns.fail.with_options(retries=3).remote("expected")
    except sp.RemoteError as exc:
        assert exc.type in ("fns.Boom", "NodeLost", "ExecutorCrashed"), exc
        counts["expected errors"] += 1
    nap = fns.async_nap.with_options(retries=3)  # every call here may meet a killed node
    assert sum(sp.gather(*(nap.spawn(0.01) for _ in range(20)))) == pytest.approx(0.2)
    counts["async calls"] += 20


def test_soak_mixed_calls_while_nodes_die(tmp_path: Path) -> None:
    duration_s = float(os.environ.get("SUPERPOSE_SOAK_S", "180"))
    counts: Counter[str] = Counter()
    stop = threading.Event()
    with _lattice(tmp_path) as handle:
        killer = threading.Thread(target=_killer, args=(handle, stop, counts), daemon=True)
        killer.start()
        deadline = time.monotonic() + duration_s
        try:
            while time.monotonic() < deadline:
                _one_round(counts)
                counts["rounds"] += 1
        finally:
            stop.set()
            killer.join()
    print("\nsoak:", dict(counts))
    assert counts["rounds"] > 0
