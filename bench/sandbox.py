"""What the sandbox costs (``superpose worker --sandbox none|user|bwrap``), measured
from the caller on a fresh ``superpose up`` lattice per mode:

- executor start: ``ExecutorProcess.start`` until the executor says it is ready
  (interpreter, imports, NATS connection, node client), 7 times, median. For ``user``
  and ``bwrap`` this includes claiming a uid, making its folder and setpriv (and bwrap's
  mounts); the spare each node keeps hides it from calls, but not from a burst;
- first call: a bundle the node has never seen, loaded into the spare;
- warm call: 300 sequential ``.remote()`` calls of a no-op, p50 and p90;
- ``relay``: what the ``bwrap`` lattice relay adds to one round trip, alone: 2,000
  request/answer exchanges of 200 bytes with a TCP echo server, direct and through
  both halves of the relay (node/executor/relay.py → node/lattice_relay.py), p50 and
  p90 (the executor's half runs in a thread here, in a process of its own for real).

``python -m bench.sandbox [MODE...]`` prints the figures (JSON) for the modes named
(all three by default); needs root for user and bwrap. Under ``bwrap`` every call's
bytes cross the lattice relay twice (the executor's loopback, then the node's unix
socket: node/lattice_relay.py), which the warm call measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
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
    confinement = Confinement.for_node(mode, state / "node", "bench", url)
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
        if confinement is not None:
            await confinement.close()
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


RELAY_ROUND_TRIPS = 2000


async def _round_trips(port: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    message = b"x" * 200
    took = []
    for _ in range(RELAY_ROUND_TRIPS):
        started = time.perf_counter()
        writer.write(message)
        await reader.readexactly(len(message))
        took.append(time.perf_counter() - started)
    writer.close()
    return sorted(took)


async def _relay_figures() -> dict[str, Any]:
    from superpose.node.executor import relay
    from superpose.node.lattice_relay import LatticeRelay

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    node_half = await LatticeRelay.open(folder / "relay", f"nats://127.0.0.1:{port}")
    try:
        direct = await _round_trips(port)
        relayed = await _round_trips(relay.start(str(node_half.path)))
    finally:
        await node_half.close()
        shutil.rmtree(folder, ignore_errors=True)
        server.close()

    def ms(found: list[float], at: int) -> float:
        return round(found[len(found) * at // 100] * 1000, 3)

    return {
        "mode": "relay",
        "direct_p50_ms": ms(direct, 50),
        "direct_p90_ms": ms(direct, 90),
        "relayed_p50_ms": ms(relayed, 50),
        "relayed_p90_ms": ms(relayed, 90),
    }


def main() -> None:
    modes = sys.argv[1:] or (["none", "user", "bwrap"] if os.geteuid() == 0 else ["none"])
    found = [asyncio.run(_relay_figures()) if m == "relay" else measure(m) for m in modes]
    print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
