"""Run the benchmark suite: ``make bench`` or ``.venv/bin/python bench/run.py [--quick]``.

Each (engine, workload) runs in its own subprocess (``bench/child.py``) with a
time limit, so one crash or hang costs one cell. Results go to
``bench/results/<date>.json`` (``<date>-quick.json`` for ``--quick``) and a
Markdown table is printed. Optional engines (Ray, Dask) are skipped, and
marked "not installed", when their libraries are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORKLOADS = (
    "cold",
    "latency",
    "throughput",
    "fanout",
    "cpu",
    "data",
    "nested",
    "up",
    "bundle",
    "update",
    "alias",
    "affinity",
    "environments",
    "memo",
)
SP_ONLY = ("up", "bundle", "update", "alias", "affinity", "environments", "memo")
TAG_ENV = "SUPERPOSE_BENCH_TAG"
KILL_GRACE_S = 20.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument(
        "--engines",
        default="superpose,ray,dask,processpool,nats",
        help="comma-separated engines (default: all)",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated workloads: " + ",".join(WORKLOADS)
    )
    parser.add_argument("--out", help="JSON output (default bench/results/<date>.json)")
    parser.add_argument(
        "--merge",
        help="re-run only the chosen cells into this earlier JSON "
        "(kept: its other cells, sizes and machine; written back to it)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=15.0,
        help="seconds to wait at most "
        "before each cell for other processes' CPU use to drop (0: don't)",
    )
    ns = parser.parse_args(argv)
    from bench import engines

    ns.engine_list = _split(ns.engines, tuple(engines.MODULES))
    ns.workload_list = _split(ns.only, WORKLOADS) if ns.only else list(WORKLOADS)
    return ns


def _split(text: str, allowed: tuple[str, ...]) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown:
        raise SystemExit(f"unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return items


# --- sizes and machine ---------------------------------------------------------------


def calibrated_sizes(quick: bool) -> Any:
    from bench.workloads import FULL, QUICK, calibrate_burn

    iterations, task_s = calibrate_burn()
    return dataclasses.replace(
        QUICK if quick else FULL, cpu_iterations=iterations, cpu_task_s=task_s
    )


def machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nats_server": _nats_server_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def source() -> dict[str, Any]:
    """Which superpose was measured: the commit, and the files changed on top of it."""

    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
        return proc.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "changed": git("status", "--porcelain", "--", "src").splitlines(),
    }


def _nats_server_version() -> str:
    try:
        from superpose.local.embedded import find_nats_server

        out = subprocess.run(
            [find_nats_server(), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() or out.stderr.strip()
    except Exception as exc:
        return f"unknown ({exc})"


# --- children ------------------------------------------------------------------------


def time_limit(workload: str, sizes: Any) -> float:
    """Seconds a child may take before it is stopped (budgets plus start-up slack)."""
    s = sizes
    limits = {
        "cold": 120.0,
        "latency": 60 + s.latency_repeats * (s.latency_calls + s.latency_warmup) * 0.05,
        "throughput": 90 + s.throughput_repeats * (s.throughput_budget_s + 60),
        "fanout": 90 + s.fanout_repeats * (s.fanout_budget_s + 30),
        "cpu": 90 + s.cpu_repeats * (s.cpu_budget_s + 30),
        "data": 90 + s.data_repeats * 120,
        "nested": 90 + s.nested_repeats * (s.nested_budget_s + 30),
        "up": 30 + s.sp_up_repeats * 60,
        "bundle": 60 + s.sp_bundle_repeats * 60,
        "update": 60 + s.sp_update_repeats * 60,
        "alias": 90.0,
        "affinity": 300.0,
        "environments": 900.0,
        "memo": 600.0,
    }
    return float(limits[workload])


def child_env(engine: str, scratch: Path, tag: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    home = scratch / "home"
    home.mkdir(exist_ok=True)
    env.update(
        {
            "SUPERPOSE_HOME": str(home),  # empty: sp.connect() starts its own embedded lattice
            TAG_ENV: tag,
            "TMPDIR": str(scratch),
            "PYTHONUNBUFFERED": "1",
            "RAY_USAGE_STATS_ENABLED": "0",  # no network here: do not try to report
        }
    )
    if engine != "superpose":  # workers of Ray, Dask and the pool import bench.* by name
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_child(engine: str, workload: str, sizes: Any, scratch: Path) -> dict[str, Any]:
    """One subprocess; its JSON, or a timeout/error cell with the tail of its output."""
    tag = uuid.uuid4().hex
    out = scratch / f"{engine}-{workload}-{tag[:8]}.json"
    log = scratch / f"{engine}-{workload}-{tag[:8]}.log"
    argv = [
        sys.executable,
        "-m",
        "bench.child",
        "--engine",
        engine,
        "--workload",
        workload,
        "--sizes",
        json.dumps(sizes.as_dict()),
        "--out",
        str(out),
    ]
    limit = time_limit(workload, sizes)
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=child_env(engine, scratch, tag),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = _wait_or_stop(proc, limit)
    reap_tagged(tag)
    if out.exists():
        cell: dict[str, Any] = json.loads(out.read_text())
    else:
        status = "timeout" if timed_out else "error"
        cell = {
            "status": status,
            "error": f"no result (exit {proc.returncode}"
            + (f", stopped after {limit:.0f} s" if timed_out else "")
            + ")",
        }
    if cell.get("status") != "ok":
        cell["log_tail"] = log.read_text(errors="replace")[-2000:]
    return cell


def _wait_or_stop(proc: subprocess.Popen[bytes], limit: float) -> bool:
    try:
        proc.wait(timeout=limit)
        return False
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def tagged_pids(tag: str) -> list[int]:
    """Processes started for one child, found by the tag in their environment."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def reap_tagged(tag: str) -> None:
    """Stop anything a child left behind (e.g. a nats-server in its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = tagged_pids(tag)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        time.sleep(2.0)


def cpu_busy(interval_s: float = 1.0) -> float:
    """Fraction of all cores busy over ``interval_s`` (the runner itself sleeps meanwhile)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    busy_a, total_a = sample()
    time.sleep(interval_s)
    busy_b, total_b = sample()
    return (busy_b - busy_a) / max(1, total_b - total_a)


def settle(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait (bounded) until the machine is mostly idle; returns the last busy fraction."""
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def run_cell(
    engine: str, workload: str, sizes: Any, scratch: Path, settle_s: float
) -> dict[str, Any]:
    if workload != "cold":
        busy = settle(settle_s) if settle_s > 0 else None
        return {**run_child(engine, workload, sizes, scratch), "busy_before": busy}
    cells = []
    for _ in range(sizes.cold_repeats):
        busy = settle(settle_s) if settle_s > 0 else None
        cells.append({**run_child(engine, "cold", sizes, scratch), "busy_before": busy})
    good = [c for c in cells if c.get("status") == "ok"]
    if not good:
        return cells[0]
    merged = {
        "status": "ok",
        "repeats": [r for c in good for r in c["repeats"]],
        "loadavg": [c.get("loadavg") for c in good],
    }
    if len(good) < len(cells):
        merged["note"] = f"{len(cells) - len(good)} of {len(cells)} cold starts failed"
    return merged


def applicable(engine: str, workload: str) -> bool:
    from bench import engines

    if workload in SP_ONLY:
        return engine == "superpose"
    module = __import__(engines.MODULES[engine], fromlist=["make"])
    return workload in module.make().workloads


def run_all(ns: argparse.Namespace, sizes: Any, scratch: Path) -> dict[str, dict[str, Any]]:
    from bench import engines

    results: dict[str, dict[str, Any]] = {}
    for engine in ns.engine_list:
        cells = results.setdefault(engine, {})
        for workload in ns.workload_list:
            if workload in SP_ONLY and engine != "superpose":
                continue
            if not engines.installed(engine):
                cells[workload] = {"status": "not installed"}
                continue
            if not applicable(engine, workload):
                cells[workload] = {"status": "n/a"}
                continue
            started = time.monotonic()
            print(f"[{engine}] {workload} …", end=" ", file=sys.stderr, flush=True)
            cells[workload] = run_cell(engine, workload, sizes, scratch, ns.settle)
            print(
                f"{cells[workload]['status']} in {time.monotonic() - started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    return results


# --- output --------------------------------------------------------------------------


def output_path(ns: argparse.Namespace, today: str) -> Path:
    if ns.out or ns.merge:
        return Path(ns.out or ns.merge)
    suffix = "-quick" if ns.quick else ""
    return ROOT / "bench" / "results" / f"{today}{suffix}.json"


def merged(earlier: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """``earlier`` with the cells just run put in place of its own, and a note of it."""
    cells = [f"{e}/{w}" for e, ws in now["results"].items() for w in ws]
    for engine, workloads in now["results"].items():
        earlier["results"].setdefault(engine, {}).update(workloads)
    earlier.setdefault("merged", []).append(
        {
            "cells": cells,
            "started": now["started"],
            "mode": now["mode"],
            "source": now["source"],
            "machine": now["machine"],
        }
    )
    return earlier


def shared_state(quick: bool) -> dict[str, Any]:
    """``bench/shared_state.py`` in a child process: shared dicts against redis-server."""
    n = "1000" if quick else "4000"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.shared_state", n],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired:
        return {"error": "bench/shared_state.py took over 900 s"}
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    found: dict[str, Any] = json.loads(proc.stdout)
    return found


def dataflow(quick: bool) -> dict[str, Any]:
    """``bench/dataflow.py``: a tree reduction with futures as arguments, against Ray
    and Dask (each engine in a child process of its own)."""
    from bench import dataflow as tree

    with contextlib.redirect_stdout(sys.stderr):  # its JSON goes in the document
        return tree.main(["2000" if quick else "10000"])


def main(argv: list[str] | None = None) -> int:
    from bench import report

    ns = parse_args(argv)
    started = dt.datetime.now()
    if ns.merge:  # the same sizes (and CPU calibration) as the cells kept
        from bench.workloads import Sizes

        sizes = Sizes(**json.loads(Path(ns.merge).read_text())["sizes"])
        ns.quick = False
    else:
        sizes = calibrated_sizes(ns.quick)
    info = machine()
    print(
        f"calibrated burn: {sizes.cpu_iterations} iterations ≈ "
        f"{sizes.cpu_task_s * 1000:.1f} ms; load average {info['loadavg_at_start']}",
        file=sys.stderr,
    )
    source_at_start = source()
    scratch = Path(tempfile.mkdtemp(prefix="spb-", dir="/tmp"))
    try:
        results = run_all(ns, sizes, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    info["loadavg_at_end"] = os.getloadavg()
    document: dict[str, Any] = {
        "date": started.date().isoformat(),
        "started": started.isoformat(timespec="seconds"),
        "wall_s": (dt.datetime.now() - started).total_seconds(),
        "mode": "merge" if ns.merge else "quick" if ns.quick else "full",
        "machine": info,
        "source": source_at_start,
        "source_at_end": source(),
        "sizes": sizes.as_dict(),
        "results": results,
    }
    if ns.merge:
        document = merged(json.loads(Path(ns.merge).read_text()), document)
    elif not ns.only:
        document["shared_state"] = shared_state(ns.quick)
        document["dataflow"] = dataflow(ns.quick)
    engines_shown = [e for e in report.ENGINES if e in document["results"]]
    report.add_summaries(document["results"])
    table = document["table"] = report.markdown_table(document["results"], engines_shown)
    results = document["results"]
    path = output_path(ns, started.date().isoformat())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    src = document["source"]
    print(
        f"\n{document['date']} · {document['mode']} run · superpose {src['commit']}"
        f"{' + ' + str(len(src['changed'])) + ' changed src files' if src['changed'] else ''}"
        f" · load average {info['loadavg_at_start'][0]:.1f} → {info['loadavg_at_end'][0]:.1f}\n"
    )
    for merge in document.get("merged", []):
        msrc = merge["source"]
        print(
            f"re-run at superpose {msrc['commit']}"
            f"{' + ' + str(len(msrc['changed'])) + ' changed src files' if msrc['changed'] else ''}"
            f" ({merge['started']}): {', '.join(merge['cells'])}\n"
        )
    print(table)
    if document["source_at_end"] != source_at_start:
        print("\n⚠ superpose's source changed while the suite ran; see source/source_at_end")
    for line in report.failures(results):
        print(line)
    if "shared_state" in document:
        print("\nshared dicts vs Redis:", json.dumps(document["shared_state"].get("ratios")))
    if "dataflow" in document:
        print("\ntree reduction with futures as arguments:", json.dumps(document["dataflow"]))
    print(f"\nresults: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
