"""A tree reduction with futures as arguments (issue 16, item 2), against Ray and Dask.

``python -m bench.dataflow [TASKS] [--engines superpose,ray,dask]`` prints JSON.

``TASKS`` (default 10,000) tasks in all: ``TASKS/2`` leaves ``leaf(i)``, then pairs
summed level by level with ``add(a, b)`` until one is left, every call submitted at
once from one caller with the futures of the level below as its arguments: superpose
``add.spawn(f1, f2)``, Ray ``add.remote(ref1, ref2)`` (ObjectRefs), Dask
``client.submit(add, f1, f2)``. Each engine runs in a child process of its own, on 2
worker processes (superpose: a private lattice of 2 nodes), warmed by a small tree
first; the time is from the first submission to the root's result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

ENGINES = ("superpose", "ray", "dask")
TIMEOUT_S = 900
WARM_TASKS = 200


def tree(leaves: int, leaf: Callable[[int], Any], add: Callable[[Any, Any], Any]) -> Any:
    """The root of a pairwise sum over ``leaf(i)`` for i < leaves (futures all along)."""
    level = [leaf(i) for i in range(leaves)]
    while len(level) > 1:
        pairs = [add(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def run_superpose(tasks: int) -> float:
    import superpose as sp
    from bench import dataflow_fns as fns

    with sp.connect(workers=2, show_logs=False):
        return _timed(tasks, fns.leaf.spawn, fns.add.spawn, lambda root: root.result())


def run_ray(tasks: int) -> float:
    import ray

    from bench import dataflow_fns as fns

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        leaf, add = ray.remote(fns.leaf.__wrapped__), ray.remote(fns.add.__wrapped__)
        return _timed(tasks, leaf.remote, add.remote, ray.get)
    finally:
        ray.shutdown()


def run_dask(tasks: int) -> float:
    from distributed import Client, LocalCluster

    from bench import dataflow_fns as fns

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    client = Client(cluster)
    try:
        leaf, add = fns.leaf.__wrapped__, fns.add.__wrapped__
        return _timed(
            tasks,
            lambda i: client.submit(leaf, i, pure=False),
            lambda a, b: client.submit(add, a, b, pure=False),
            lambda root: root.result(),
        )
    finally:
        client.close()
        cluster.close()


def _timed(
    tasks: int,
    leaf: Callable[[int], Any],
    add: Callable[[Any, Any], Any],
    result: Callable[[Any], Any],
) -> float:
    """Seconds for a tree of ``tasks`` tasks, after a small one to warm up."""
    warm = WARM_TASKS // 2
    assert result(tree(warm, leaf, add)) == sum(range(warm))
    leaves = tasks // 2
    started = time.perf_counter()
    total = result(tree(leaves, leaf, add))
    elapsed = time.perf_counter() - started
    assert total == sum(range(leaves)), total
    return elapsed


RUNNERS = {"superpose": run_superpose, "ray": run_ray, "dask": run_dask}


def in_child(engine: str, tasks: int) -> dict[str, Any]:
    """One engine's run in a process of its own: seconds, or why there are none."""
    code = f"from bench.dataflow import RUNNERS; print(RUNNERS[{engine!r}]({tasks}))"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"over {TIMEOUT_S} s"}
    if proc.returncode != 0:
        missing = "No module named" in proc.stderr
        return {"error": "not installed" if missing else proc.stderr[-1500:]}
    return {"seconds": float(proc.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", type=int, nargs="?", default=10_000)
    parser.add_argument("--engines", default=",".join(ENGINES))
    ns = parser.parse_args(argv)
    cells = {engine: in_child(engine, ns.tasks) for engine in ns.engines.split(",")}
    mine = cells.get("superpose", {}).get("seconds")
    ratios = {
        f"superpose/{engine}": round(mine / cell["seconds"], 2)
        for engine, cell in cells.items()
        if engine != "superpose" and mine and "seconds" in cell
    }
    document = {"tasks": ns.tasks, "cells": cells, "ratios": ratios}
    print(json.dumps(document))
    return document


if __name__ == "__main__":
    main()
