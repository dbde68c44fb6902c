"""How throughput, fan-out and warm latency change with the number of nodes (1 slot each).

Usage: ``.venv/bin/python bench/scaling.py [--quick]``

For N in 1, 2, 4 it starts ``LocalLattice(state_dir=None, workers=N, slots=1)`` on an
asyncio loop in a background thread, connects a client, measures, then closes the client
and stops the lattice before the next N. Prints a Markdown table and writes JSON to
``bench/results/<date>-scaling.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import superpose as sp  # noqa: E402
from bench import sp_tasks  # noqa: E402
from bench.harness import percentile  # noqa: E402
from superpose.local.lattice import LocalLattice  # noqa: E402

NODE_COUNTS = (1, 2, 4)
RESULTS_DIR = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Sizes:
    throughput_tasks: int = 20_000
    throughput_repeats: int = 3
    fanout_tasks: int = 2_000
    fanout_sleep_ms: float = 5.0
    fanout_repeats: int = 3
    latency_warmup: int = 50
    latency_calls: int = 500


QUICK = Sizes(
    throughput_tasks=2_000,
    throughput_repeats=1,
    fanout_tasks=200,
    fanout_repeats=1,
    latency_warmup=10,
    latency_calls=100,
)


@contextmanager
def lattice(nodes: int) -> Iterator[sp.Client]:
    """A private lattice of ``nodes`` nodes × 1 slot and a client; both stopped on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="scaling-lattice", daemon=True)
    thread.start()
    local = LocalLattice(state_dir=None, workers=nodes, slots=1)
    try:
        url = asyncio.run_coroutine_threadsafe(local.start(), loop).result(timeout=60)
        client = sp.connect(url, show_logs=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        asyncio.run_coroutine_threadsafe(local.stop(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def throughput(sizes: Sizes) -> list[float]:
    """No-op spawns submitted at once and gathered: tasks/s per repeat."""
    out = []
    for _ in range(sizes.throughput_repeats):
        started = time.perf_counter()
        futures = [sp_tasks.noop.spawn(i) for i in range(sizes.throughput_tasks)]
        results = sp.gather(*futures)
        wall = time.perf_counter() - started
        _check(results == list(range(sizes.throughput_tasks)), "noop results out of order")
        out.append(sizes.throughput_tasks / wall)
    return out


def fanout(sizes: Sizes) -> list[float]:
    """Sleep tasks submitted at once and gathered: wall seconds per repeat."""
    out = []
    for _ in range(sizes.fanout_repeats):
        started = time.perf_counter()
        ms = sizes.fanout_sleep_ms
        futures = [sp_tasks.sleep_ms.spawn(ms) for _ in range(sizes.fanout_tasks)]
        results = sp.gather(*futures)
        out.append(time.perf_counter() - started)
        _check(all(r == sizes.fanout_sleep_ms for r in results), "sleep_ms returned wrong value")
    return out


def latency(sizes: Sizes) -> dict[str, float]:
    """Sequential warm no-op calls: p50/p99 in ms."""
    for i in range(sizes.latency_warmup):
        sp_tasks.noop.remote(i)
    times = []
    for i in range(sizes.latency_calls):
        started = time.perf_counter()
        result = sp_tasks.noop.remote(i)
        times.append(time.perf_counter() - started)
        _check(result == i, f"noop({i}) returned {result!r}")
    return {"p50_ms": percentile(times, 50) * 1000, "p99_ms": percentile(times, 99) * 1000}


def measure(nodes: int, sizes: Sizes) -> dict[str, Any]:
    """All three workloads on one fresh lattice of ``nodes`` nodes."""
    print(f"-- {nodes} node(s) × 1 slot", file=sys.stderr, flush=True)
    with lattice(nodes):
        sp_tasks.noop.remote(0)  # cold start: ship the script bundle before timing
        lat = latency(sizes)
        tput = throughput(sizes)
        fan = fanout(sizes)
    ideal_s = sizes.fanout_tasks * sizes.fanout_sleep_ms / 1000 / nodes
    return {
        "nodes": nodes,
        "slots_per_node": 1,
        "throughput_tasks_per_s": statistics.median(tput),
        "throughput_all": tput,
        "fanout_s": statistics.median(fan),
        "fanout_all": fan,
        "fanout_ideal_s": ideal_s,
        "fanout_efficiency_pct": 100 * ideal_s / statistics.median(fan),
        "latency_p50_ms": lat["p50_ms"],
        "latency_p99_ms": lat["p99_ms"],
    }


def table(rows: list[dict[str, Any]], sizes: Sizes) -> str:
    """The figures as a Markdown table, one row per node count."""
    fan = f"fan-out {sizes.fanout_tasks:,} × {sizes.fanout_sleep_ms:g} ms"
    lines = [
        f"| nodes × slots | no-op throughput ({sizes.throughput_tasks:,}) ↑ | {fan} ↓ "
        f"| ideal | fan-out efficiency | warm call p50 ↓ | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['nodes']} × 1 | {r['throughput_tasks_per_s']:,.0f} tasks/s "
            f"({min(r['throughput_all']):,.0f}–{max(r['throughput_all']):,.0f}) "
            f"| {r['fanout_s']:.2f} s | {r['fanout_ideal_s']:.2f} s "
            f"| {r['fanout_efficiency_pct']:.0f} % "
            f"| {r['latency_p50_ms']:.2f} ms | {r['latency_p99_ms']:.2f} ms |"
        )
    return "\n".join(lines)


def write_json(rows: list[dict[str, Any]], sizes: Sizes, quick: bool) -> Path:
    """Save the figures to ``bench/results/<date>-scaling[-quick].json``."""
    date = datetime.date.today().isoformat()
    path = RESULTS_DIR / f"{date}-scaling{'-quick' if quick else ''}.json"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "sizes": asdict(sizes),
        "rows": rows,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    rows = [measure(n, sizes) for n in NODE_COUNTS]
    print(table(rows, sizes))
    print(f"\nwrote {write_json(rows, sizes, args.quick)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
