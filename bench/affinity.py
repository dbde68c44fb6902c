"""Warm affinity: a mixed workload over 20 bundles on 2 nodes, with and without it.

Each run starts its own ``superpose up`` lattice (2 nodes × 1 slot, room for 12
warm bundles each), deploys 20 small apps, then makes the same seeded random
sequence of calls from a few threads. Cold loads (a bundle loaded into a new
executor) are read from the nodes' heartbeats. ``SUPERPOSE_AFFINITY=0`` gives
the queue group's random placement; the default hands a call for a bundle a
node lacks to the node that holds it warm and has room.

``python -m bench.affinity`` runs it alone and prints the comparison.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.sp_only import _running_lattice, _write_app

BUNDLES = 20
EXECUTORS_PER_NODE = 12
"""Room for 12 warm bundles a node: the 20 fit on two nodes only if each keeps its share."""
CALLS = 400
THREADS = 3
SEED = 20
SETTLE_S = 2.5
"""Past one node heartbeat, so the last calls' counts are in the nodes' entries."""


def affinity(sizes: Any = None) -> list[dict[str, Any]]:
    """Cold loads and wall time of the same workload with affinity on, then off."""
    on = _run(affinity_on=True)
    off = _run(affinity_on=False)
    return [
        {
            "cold_loads_on": on["cold_loads"],
            "cold_loads_off": off["cold_loads"],
            "ratio": on["cold_loads"] / max(1, off["cold_loads"]),
            "wall_on_s": on["wall_s"],
            "wall_off_s": off["wall_s"],
        }
    ]


def _run(*, affinity_on: bool) -> dict[str, Any]:
    from superpose.client.deploy import deploy
    from superpose.client.status import nodes

    root = Path(tempfile.mkdtemp(prefix="bench-affinity-"))
    env = {"SUPERPOSE_MAX_EXECUTORS": str(EXECUTORS_PER_NODE)}
    if not affinity_on:
        env["SUPERPOSE_AFFINITY"] = "0"
    try:
        with _running_lattice(env) as (client, _home):
            names = []
            for i in range(BUNDLES):
                folder = root / f"app{i:02d}"
                _write_app(folder, f"t{i}")
                client.run(deploy(client, folder))
                names.append(folder.name)
            handles = [client.function(f"{name}.answer") for name in names]
            rng = random.Random(SEED)
            sequence = [rng.choice(handles) for _ in range(CALLS)]
            started = time.perf_counter()
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(lambda handle: handle.remote(), sequence))
            wall = time.perf_counter() - started
            time.sleep(SETTLE_S)
            found = client.run(nodes(client))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "cold_loads": sum(n.cold_loads for n in found),
        "wall_s": wall,
    }


def main() -> int:
    (row,) = affinity()
    print(
        f"{BUNDLES} bundles, {CALLS} calls from {THREADS} threads on 2 nodes × 1 slot, "
        f"{EXECUTORS_PER_NODE} warm executors a node: "
        f"cold loads {row['cold_loads_on']} with warm affinity, {row['cold_loads_off']} with "
        f"random placement (ratio {row['ratio']:.2f}); wall {row['wall_on_s']:.1f} s vs "
        f"{row['wall_off_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
