"""Nothing accepted is lost: nodes killed every second, and the broker killed mid-load.

The checkers compute the expected set from the client's own record of accepted
invocation ids (futures whose envelope JetStream acknowledged), never from the
store under test, and count real executions from files the function writes.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import durable_fns as dfns
import superpose as sp
from conftest import Lattice, client_on, start_lattice, stop_lattice
from superpose.lattice import results

CHAOS_INVOCATIONS = 2000
CHAOS_KILLS = 12
"""One node kill -9'd every second, this many times, while the invocations run."""
BROKER_INVOCATIONS = 1000


@pytest.fixture
def fresh_lattice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    handle = start_lattice(tmp_path_factory.mktemp("chaos"), workers=3, gateway=False)
    yield handle
    stop_lattice(handle)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
    except OSError:
        pass
    return found


def _kill_node(handle: Lattice, rng: random.Random) -> bool:
    """kill -9 one live node agent and its executors; the supervisor restarts it."""
    live = [
        c.process.pid
        for c in handle.lattice.children
        if c.process is not None and c.process.returncode is None
    ]
    if not live:
        return False
    victim = rng.choice(live)
    for pid in [*_children(victim), victim]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def _accepted(futures: list[sp.Future]) -> set[str]:
    for future in futures:
        assert future.accepted.wait(60), f"{future.invocation_id} was never persisted"
    return {f.invocation_id for f in futures}


@pytest.mark.timeout(600)
def test_kill_a_node_every_second_and_lose_nothing(fresh_lattice: Lattice, tmp_path: Path) -> None:
    rng = random.Random(7)
    directory = str(tmp_path)
    keys = [f"c{i}" for i in range(CHAOS_INVOCATIONS)]
    kills = 0
    stop = threading.Event()

    def chaos() -> None:
        nonlocal kills
        while kills < CHAOS_KILLS and not stop.wait(1.0):
            kills += _kill_node(fresh_lattice, rng)

    with client_on(fresh_lattice) as client:
        futures = [dfns.counted_done.spawn(directory, key, 0.01) for key in keys]
        accepted = _accepted(futures)
        killer = threading.Thread(target=chaos, daemon=True)
        killer.start()
        try:
            values = [f.result(timeout=300) for f in futures]
        finally:
            stop.set()
            killer.join()
        stored = client.run(results.get_many(client.nc, sorted(accepted)))

    assert values == keys
    assert set(stored) == accepted, f"lost: {sorted(accepted - set(stored))[:10]}"
    assert all(r.error is None for r in stored.values())
    started = sum(dfns.runs(directory, key) for key in keys)
    completed = [dfns.runs(directory, f"{key}.done") for key in keys]
    assert all(n >= 1 for n in completed)
    duplicates = sum(n - 1 for n in completed)
    print(
        f"\nchaos: {len(accepted)} accepted, {len(stored)} stored, {kills} kills, "
        f"{started - len(keys)} re-started, {duplicates} completed twice"
    )
    assert kills >= 3, "the run ended before the chaos began"
    assert duplicates <= kills


@pytest.mark.timeout(600)
def test_broker_killed_mid_load_loses_no_acknowledged_invocation(
    fresh_lattice: Lattice, tmp_path: Path
) -> None:
    directory = str(tmp_path)
    keys = [f"b{i}" for i in range(BROKER_INVOCATIONS)]
    server = fresh_lattice.lattice.server
    assert server is not None and server.process is not None
    with client_on(fresh_lattice) as client:
        futures = [dfns.counted_done.spawn(directory, key, 0.005) for key in keys]
        accepted = _accepted(futures)
        deadline = time.monotonic() + 60
        while sum(f.done() for f in futures) < BROKER_INVOCATIONS // 10:
            assert time.monotonic() < deadline, "no progress before the kill"
            time.sleep(0.01)
        old_pid = server.process.pid
        os.kill(old_pid, signal.SIGKILL)  # a crash, not a clean stop: fsync'd writes survive
        values = [f.result(timeout=300) for f in futures]
        assert server.process is not None and server.process.pid != old_pid  # restarted
        stored = client.run(results.get_many(client.nc, sorted(accepted)))
    assert values == keys
    assert set(stored) == accepted, f"lost: {sorted(accepted - set(stored))[:10]}"
    assert all(dfns.runs(directory, f"{key}.done") >= 1 for key in keys)
