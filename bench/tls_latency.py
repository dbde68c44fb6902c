"""Warm call latency through a lattice that requires TLS, against a plain one.

``.venv/bin/python bench/tls_latency.py [--calls 1000] [--rounds 3]``

Starts two local lattices (one node of one slot each; one with ``up --tls``'s
generated certificate), warms ``noop`` on each, then times sequential
``noop.remote()`` calls, alternating between the two in rounds so that drift on a
shared machine falls on both. Prints p50 and p99 per lattice and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import superpose as sp  # noqa: E402
from bench import sp_tasks  # noqa: E402
from superpose.client import session  # noqa: E402
from superpose.local import tls  # noqa: E402
from superpose.local.lattice import LocalLattice  # noqa: E402


def start(state_dir: Path, with_tls: bool) -> tuple[LocalLattice, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    server_tls = tls.generated(state_dir, []) if with_tls else None
    lattice = LocalLattice(state_dir=state_dir, workers=1, slots=1, tls=server_tls)
    asyncio.run_coroutine_threadsafe(lattice.start(), loop).result()
    return lattice, loop


def timed_calls(client: sp.Client, calls: int) -> list[float]:
    session.set_default(client)  # the client .remote() goes through
    out = []
    for i in range(calls):
        started = time.perf_counter()
        sp_tasks.noop.remote(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    ns = parser.parse_args()
    samples: dict[str, list[float]] = {"plain": [], "tls": []}
    lattices = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in samples:
            lattices[name] = start(Path(tmp) / name, name == "tls")
        clients = {
            name: sp.connect(lattice.url, show_logs=False, tls_ca=lattice.tls_ca)
            for name, (lattice, _) in lattices.items()
        }
        try:
            for client in clients.values():
                timed_calls(client, 100)  # warm: bundle uploaded, executor started
            for _ in range(ns.rounds):
                for name, client in clients.items():
                    samples[name] += timed_calls(client, ns.calls)
        finally:
            for client in clients.values():
                client.close()
            for lattice, loop in lattices.values():
                asyncio.run_coroutine_threadsafe(lattice.stop(), loop).result()
    report(samples)


def report(samples: dict[str, list[float]]) -> None:
    p50 = {name: statistics.median(xs) for name, xs in samples.items()}
    for name, xs in samples.items():
        p99 = statistics.quantiles(xs, n=100)[98]
        print(f"{name:6} n={len(xs)}  p50 {p50[name]:.3f} ms  p99 {p99:.3f} ms")
    extra = (p50["tls"] / p50["plain"] - 1) * 100
    print(f"TLS adds {p50['tls'] - p50['plain']:+.3f} ms to the warm p50 ({extra:+.1f} %)")


if __name__ == "__main__":
    main()
