"""Lineage: what recording costs, and how long a lost object takes to make again.

``.venv/bin/python bench/lineage.py [--mb 10] [--rounds 3] [--out FILE.json]``

Starts a local lattice (2 nodes, 4 slots each) and, in each round:

- times 200 lineage records written one after another (the cost ``sp.put`` inside a
  function pays per held object), median per record;
- has an idempotent function put ``--mb`` MB and return the Ref, reads it (the
  first read), kills the executor holding it (SIGKILL), and times the caller's
  ``sp.get`` of the lost Ref (the producer runs again, the new object is pulled);
- does the same with 8 functions reading the lost Ref at once, and counts how often
  the producer ran (it should be twice: the first run and one remake).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import superpose as sp  # noqa: E402
from bench import lineage_fns  # noqa: E402
from bench.refs import local_lattice, report  # noqa: E402
from superpose import protocol  # noqa: E402
from superpose.errors import ObjectLostError  # noqa: E402
from superpose.lattice import lineage  # noqa: E402
from superpose.lattice.refs import Ref, fetch_held  # noqa: E402

READERS = 8
RECORDS = 200


def lost(client: sp.Client, size: int) -> tuple[Ref, str, float]:
    """A Ref whose holder was killed, its seed, and how long making it first took."""
    seed = uuid.uuid4().hex
    started = time.perf_counter()
    ref, pid = lineage_fns.produce.remote(size, seed)
    sp.get(ref)
    first = time.perf_counter() - started
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            client.run(fetch_held(client.nc, ref))
        except ObjectLostError:
            return ref, seed, first
        time.sleep(0.05)
    raise RuntimeError("the killed executor's object is still readable after 60 s")


async def records(client: sp.Client) -> float:
    record = protocol.LineageRecord(function="bench.f", idempotent=True, invocation=b"x" * 300)
    times = []
    for _ in range(RECORDS):
        ref = Ref("ab" * 32, 1, holder="h", source="s", blob=uuid.uuid4().hex)
        started = time.perf_counter()
        await lineage.record(client.nc, ref, record)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def one_round(client: sp.Client, size: int) -> dict[str, float]:
    out: dict[str, float] = {"record (median of 200)": client.run(records(client))}
    ref, _, first = lost(client, size)
    out["first: produce + get"] = first
    started = time.perf_counter()
    sp.get(ref)
    out["get of the lost Ref (remade)"] = time.perf_counter() - started
    ref, seed, _ = lost(client, size)
    started = time.perf_counter()
    sp.gather(*(lineage_fns.length.spawn(ref) for _ in range(READERS)))
    out[f"{READERS} readers of the lost Ref"] = time.perf_counter() - started
    out[f"producer runs for {READERS} readers"] = float(
        sp.Dict("lineage_bench", shared=True).get(seed, 0)
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mb", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    ns = parser.parse_args()
    rounds: list[dict[str, float]] = []
    with local_lattice() as url:
        client = sp.connect(url, show_logs=False)
        try:
            one_round(client, 1_000_000)  # warm: bundle, executors on both nodes
            for _ in range(ns.rounds):
                rounds.append(one_round(client, ns.mb * 1_000_000))
        finally:
            client.close()
    report(rounds, ns.mb, ns.out)


if __name__ == "__main__":
    main()
