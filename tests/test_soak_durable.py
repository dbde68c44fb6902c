"""Durable soak (``make soak``, not CI): 100,000 invocations over 10 minutes while nodes
are killed at random and the broker is killed once, then a full million-item map.

Prints submitted / accepted / completed / duplicated / lost. The expected set is the
client's own record of accepted ids. ``SUPERPOSE_SOAK_DURABLE_N`` (default 100,000) and
``SUPERPOSE_SOAK_DURABLE_S`` (default 600) scale it down for a quick look.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import durable_fns as dfns
import superpose as sp
from conftest import client_on, lattice_env, start_lattice, stop_lattice
from superpose.lattice import results
from test_chaos import _kill_node

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]
CHUNK = 1000
NODE_KILL_EVERY_S = 15.0


def test_soak_durable_invocations_with_kills_and_a_broker_restart(tmp_path: Path) -> None:
    total = int(os.environ.get("SUPERPOSE_SOAK_DURABLE_N", "100000"))
    duration_s = float(os.environ.get("SUPERPOSE_SOAK_DURABLE_S", "600"))
    directory = tmp_path / "runs"
    directory.mkdir()
    handle = start_lattice(tmp_path / "lattice", workers=3, gateway=False)
    counts: Counter[str] = Counter()
    stop = threading.Event()
    rng = random.Random(11)

    def chaos() -> None:
        broker_killed = False
        started = time.monotonic()
        while not stop.wait(NODE_KILL_EVERY_S):
            counts["nodes killed"] += _kill_node(handle, rng)
            if not broker_killed and time.monotonic() - started > duration_s / 2:
                server = handle.lattice.server
                if server is not None and server.process is not None:
                    os.kill(server.process.pid, signal.SIGKILL)
                    counts["broker kills"] += 1
                    broker_killed = True

    futures: list[sp.Future] = []
    try:
        with client_on(handle) as client:
            killer = threading.Thread(target=chaos, daemon=True)
            killer.start()
            pause = duration_s / max(1, total // CHUNK)
            started = time.monotonic()
            for start in range(0, total, CHUNK):
                keys = [f"s{i}" for i in range(start, min(total, start + CHUNK))]
                futures += [dfns.counted_done.spawn(str(directory), k, 0.0) for k in keys]
                counts["submitted"] += len(keys)
                time.sleep(max(0.0, started + pause * (start // CHUNK + 1) - time.monotonic()))
            accepted = {f.invocation_id for f in futures if f.accepted.wait(120)}
            counts["accepted"] = len(accepted)
            for future in futures:
                try:
                    future.result(timeout=900)
                    counts["completed"] += 1
                except Exception as exc:  # counted, then the test fails below
                    counts[f"failed: {type(exc).__name__}"] += 1
            stop.set()
            killer.join()
            stored = client.run(results.get_many(client.nc, sorted(accepted)))
    finally:
        stop.set()
        stop_lattice(handle)
    runs = [dfns.runs(str(directory), f"s{i}.done") for i in range(total)]
    counts["executed twice or more"] = sum(1 for n in runs if n > 1)
    counts["lost"] = len(accepted - set(stored))
    print("\ndurable soak:", json.dumps(dict(counts)))
    assert counts["lost"] == 0
    assert counts["completed"] == total


def test_soak_a_million_item_map_stays_small(tmp_path: Path) -> None:
    handle = start_lattice(tmp_path / "lattice", workers=2, gateway=False)
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).parent / "million_map.py"), handle.url, "1000000"],
            capture_output=True,
            text=True,
            timeout=3000,
            cwd=Path(__file__).parent,
            env={**os.environ, **lattice_env(handle.url)},
        )
    finally:
        stop_lattice(handle)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\nmillion map:", report)
    assert report["peak_rss_mb"] < 300
