"""One engine, one workload, in its own process: ``python -m bench.child``.

The runner starts this with a time limit and reads the JSON it writes to
``--out``; a crash or a hang here costs only this cell of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from bench import engines, harness, sp_only
from bench.workloads import Sizes


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through engine.stop() and lattice teardown


def run(engine_name: str, workload: str, sizes: Sizes) -> dict[str, Any]:
    if workload in sp_only.DRIVERS:
        return {"repeats": sp_only.DRIVERS[workload](sizes)}
    engine = engines.load(engine_name)
    if workload == "cold":
        return {"repeats": harness.cold(engine, sizes)}
    engine.start()
    try:
        info = engine.info()
        repeats = harness.DRIVERS[workload](engine, sizes)
    finally:
        engine.stop()
    return {"repeats": repeats, "info": info}


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.child")
    parser.add_argument("--engine", required=True)
    parser.add_argument("--workload", required=True)
    parser.add_argument("--sizes", required=True, help="JSON of bench.workloads.Sizes")
    parser.add_argument("--out", required=True)
    ns = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_term)
    sizes = Sizes(**json.loads(ns.sizes))
    started = time.perf_counter()
    load_before = os.getloadavg()
    try:
        report = {"status": "ok", **run(ns.engine, ns.workload, sizes)}
    except BaseException as exc:  # reported in the table, never hidden
        report = {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-3000:],
        }
    report["elapsed_s"] = time.perf_counter() - started
    report["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    Path(ns.out).write_text(json.dumps(report, default=str))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
