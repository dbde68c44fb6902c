"""What the sandbox costs (``superpose worker --sandbox none|user|bwrap``), measured
from the caller on a fresh ``superpose up`` lattice per mode:

- executor start: ``ExecutorProcess.start`` until the executor says it is ready
  (interpreter, imports, NATS connection, node client), 7 times, median. For ``user``
  and ``bwrap`` this includes claiming a uid, making its folder and setpriv (and bwrap's
  mounts); the spare each node keeps hides it from calls, but not from a burst;
- first call: a bundle the node has never seen, loaded into the spare;
- warm call: 300 sequential ``.remote()`` calls of a no-op, p50 and p90.

``python -m bench.sandbox`` prints the figures (JSON); needs root for user and bwrap.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sp_only import _running_lattice

WARM_CALLS = 300
STARTS = 7


async def _executor_starts(url: str, mode: str) -> list[float]:
    from superpose.node.executor_process import ExecutorProcess
    from superpose.node.sandbox import Confinement

    state = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    state.chmod(0o755)
    confinement = Confinement.for_node(mode, state / "node", "bench")
    took = []
    try:
        for _ in range(STARTS):
            started = time.perf_counter()
            executor = await ExecutorProcess.start(
                url, "bench", lambda c: None, lambda c: None, None, confinement
            )
            took.append(time.perf_counter() - started)
            await executor.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return took


def measure(mode: str) -> dict[str, Any]:
    from bench import sandbox_fns
    from superpose.local.state import find_running_lattice

    with _running_lattice(env={"SUPERPOSE_SANDBOX": mode}) as (_client, home):
        started = time.perf_counter()
        sandbox_fns.noop.remote(0)
        first = time.perf_counter() - started
        warm = []
        for i in range(WARM_CALLS):
            started = time.perf_counter()
            sandbox_fns.noop.remote(i)
            warm.append(time.perf_counter() - started)
        url = find_running_lattice(home)
        assert url is not None
        starts = asyncio.run(_executor_starts(url, mode))
    warm.sort()
    return {
        "mode": mode,
        "executor_start_ms": round(statistics.median(starts) * 1000, 1),
        "first_call_ms": round(first * 1000, 1),
        "warm_p50_ms": round(warm[len(warm) // 2] * 1000, 3),
        "warm_p90_ms": round(warm[len(warm) * 9 // 10] * 1000, 3),
    }


def main() -> None:
    modes = ["none", "user", "bwrap"] if os.geteuid() == 0 else ["none"]
    print(json.dumps([measure(mode) for mode in modes], indent=2))


if __name__ == "__main__":
    main()
