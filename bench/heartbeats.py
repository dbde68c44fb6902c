"""What a node heartbeat costs the NATS servers: KV writes of a ``NodeInfo`` as fast as
they are taken, on one server (R1) and on a 3-server cluster (R3).

Usage: ``.venv/bin/python bench/heartbeats.py [--seconds S] [--writers N] [--json]``

Each heartbeat is one write to the ``sp_nodes`` bucket; a lattice of N nodes beating
every ``NODE_HEARTBEAT_S`` writes N / NODE_HEARTBEAT_S per second, idle or not. For each
set-up this starts the servers (as ``superpose up`` does, fsync on every write) with a
bucket laid out like ``sp_nodes``, keeps ``--writers`` heartbeats in flight over 10,000
keys for ``--seconds``, and prints the writes per second taken and the servers' CPU time
per write (all servers together, from /proc), so the cost of a heartbeat period at the
scales of docs/scaling.md section 3c can be worked out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nats.js.api import KeyValueConfig, StorageType  # noqa: E402

from superpose import protocol  # noqa: E402
from superpose.lattice.connection import connect  # noqa: E402
from superpose.local.cluster import EmbeddedCluster  # noqa: E402
from superpose.local.embedded import EmbeddedServer  # noqa: E402

KEYS = 10_000
BUCKET = "bench_beats"
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def node_info(i: int) -> bytes:
    """A heartbeat as a busy node writes it: a few warm bundles and some traffic."""
    digests = [f"{i:08x}{j:056x}" for j in range(4)]
    return protocol.NodeInfo(
        id=f"n{i:015x}",
        host="worker-host-name",
        pid=12345,
        labels={"gpu": "a100", "zone": "eu-west-1a"},
        slots=8,
        busy=3,
        warm=digests,
        started=time.time(),
        seen=time.time(),
        served=123456,
        traffic={f"app@{d}": 1000 for d in digests},
    ).encode()


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS_PER_S


async def measure(url: str, pids: list[int], replicas: int, seconds: float, writers: int) -> Any:
    nc = await connect(url, name="bench-heartbeats")
    js = nc.jetstream()
    try:
        kv = await js.create_key_value(
            KeyValueConfig(
                bucket=BUCKET, ttl=protocol.NODE_TTL_S, replicas=replicas, storage=StorageType.FILE
            )
        )
        values = [node_info(i) for i in range(KEYS)]
        writes = 0
        stop = time.monotonic() + seconds

        async def writer(start: int) -> None:
            nonlocal writes
            i = start
            while time.monotonic() < stop:
                await kv.put(f"n{i % KEYS}", values[i % KEYS])
                writes += 1
                i += writers

        before, started = cpu_s(pids), time.monotonic()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        wall, cpu = time.monotonic() - started, cpu_s(pids) - before
    finally:
        await nc.close()
    return {
        "replicas": replicas,
        "value_bytes": len(values[0]),
        "writes_per_s": round(writes / wall),
        "server_cpu_us_per_write": round(cpu / writes * 1e6),
        "server_cores_at_5000_per_s": round(cpu / writes * 5000, 2),
        "server_cores_at_10000_per_s": round(cpu / writes * 10000, 2),
    }


async def run(seconds: float, writers: int) -> list[Any]:
    results = []
    with tempfile.TemporaryDirectory(prefix="sp-beats-") as tmp:
        single = EmbeddedServer(Path(tmp) / "one")
        url = await single.start()
        try:
            assert single.process is not None
            results.append(await measure(url, [single.process.pid], 1, seconds, writers))
        finally:
            single.stop()
        cluster = EmbeddedCluster(Path(tmp) / "three", size=3)
        url = await cluster.start()
        try:
            pids = [s.process.pid for s in cluster.servers if s.process is not None]
            results.append(await measure(url, pids, 3, seconds, writers))
        finally:
            cluster.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=64, help="heartbeats in flight")
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args()
    results = asyncio.run(run(ns.seconds, ns.writers))
    if ns.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(
            f"R{r['replicas']}: {r['writes_per_s']:,} writes/s of {r['value_bytes']} B, "
            f"{r['server_cpu_us_per_write']} µs server CPU each; "
            f"5,000/s = {r['server_cores_at_5000_per_s']} cores, "
            f"10,000/s = {r['server_cores_at_10000_per_s']} cores"
        )


if __name__ == "__main__":
    main()
