"""What a caller sees while the NATS server leading a stream dies, on a 3-server cluster.

Usage: ``.venv/bin/python bench/failover.py [--rounds N] [--observe S] [--json]``

Starts ``LocalLattice(servers=3, workers=3, slots=2)`` with ``SUPERPOSE_REPLICAS=3`` in a
temporary folder (the supervisor restarts a killed server, as ``superpose up --servers 3``
does). Three load loops run throughout: durable calls (``sleep_ms.spawn(5)`` then its
result, 4 threads), direct calls (``noop.remote()``, 2 threads) and a status reader (the
live nodes, as ``superpose status`` lists them, every 0.2 s). For each scenario, once the
cluster is whole again, it kills the server leading one stream and watches for
``--observe`` seconds. Prints, per scenario: the longest durable and direct call, direct
calls that failed, the longest gap between two stored heartbeats of any node, the fewest
nodes ``status`` listed, and ``status`` reads that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["SUPERPOSE_REPLICAS"] = "3"

import superpose as sp  # noqa: E402
from bench import sp_tasks  # noqa: E402
from superpose import protocol  # noqa: E402
from superpose.client.client import Client  # noqa: E402
from superpose.client.status import nodes  # noqa: E402
from superpose.local.cluster import EmbeddedCluster  # noqa: E402
from superpose.local.lattice import LocalLattice  # noqa: E402

SCENARIOS = [
    ("results leader, SIGKILL", protocol.RESULTS_STREAM, signal.SIGKILL),
    ("work leader, SIGKILL", protocol.WORK_STREAM, signal.SIGKILL),
    ("nodes leader, SIGKILL", protocol.kv_stream(protocol.NODES_BUCKET), signal.SIGKILL),
    ("results leader, SIGTERM", protocol.RESULTS_STREAM, signal.SIGTERM),
]
STREAMS = [protocol.RESULTS_STREAM, protocol.WORK_STREAM, protocol.kv_stream(protocol.NODES_BUCKET)]


@dataclass
class Window:
    """What the load loops saw between two instants."""

    opened: float = field(default_factory=time.monotonic)
    """When the server was killed."""
    durable_ms: list[tuple[float, float]] = field(default_factory=list)
    """(started, in seconds after the kill; took, in ms), per call."""
    direct_ms: list[tuple[float, float]] = field(default_factory=list)
    direct_failed: list[str] = field(default_factory=list)
    beats: dict[str, list[float]] = field(default_factory=dict)
    """Each node's distinct ``seen`` stamps, as status read them."""
    fewest_nodes: int = 3
    status_failed: int = 0


class Load:
    """The three loops, recording into the current window."""

    def __init__(self, lattice_loop: asyncio.AbstractEventLoop, url: str) -> None:
        self.window = Window()
        self.stop = threading.Event()
        self._loop = lattice_loop
        self._url = url
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for _ in range(4):
            self._spawn(self._durable)
        for _ in range(2):
            self._spawn(self._direct)
        self._spawn(self._status)

    def _spawn(self, body: Callable[[], None]) -> None:
        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _durable(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            assert sp_tasks.sleep_ms.spawn(5).result() == 5
            self._took(self.window.durable_ms, started)

    def _direct(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                sp_tasks.noop.remote(1)
            except sp.SuperposeError as exc:
                self.window.direct_failed.append(f"{type(exc).__name__}: {exc}"[:200])
            self._took(self.window.direct_ms, started)

    def _took(self, into: list[tuple[float, float]], started: float) -> None:
        into.append((started - self.window.opened, (time.monotonic() - started) * 1000))

    def _status(self) -> None:
        client = asyncio.run_coroutine_threadsafe(Client.open(self._url), self._loop).result()
        try:
            while not self.stop.is_set():
                self._read_status(client)
                time.sleep(0.2)
        finally:
            asyncio.run_coroutine_threadsafe(client.aclose(), self._loop).result()

    def _read_status(self, client: Client) -> None:
        window = self.window
        try:
            found = asyncio.run_coroutine_threadsafe(nodes(client), self._loop).result(30)
        except Exception:
            window.status_failed += 1
            return
        window.fewest_nodes = min(window.fewest_nodes, len(found))
        for node in found:
            stamps = window.beats.setdefault(node.id, [])
            if not stamps or stamps[-1] != node.seen:
                stamps.append(node.seen)


def summary(window: Window) -> dict[str, Any]:
    gaps = [b - a for stamps in window.beats.values() for a, b in itertools.pairwise(stamps)]
    durable = max(window.durable_ms, key=lambda call: call[1], default=(0.0, 0.0))
    direct = max(window.direct_ms, key=lambda call: call[1], default=(0.0, 0.0))
    return {
        "durable_calls": len(window.durable_ms),
        "durable_max_ms": round(durable[1]),
        "durable_max_started_s": round(durable[0], 1),
        "direct_calls": len(window.direct_ms),
        "direct_max_ms": round(direct[1]),
        "direct_max_started_s": round(direct[0], 1),
        "direct_failed": len(window.direct_failed),
        "direct_failures": sorted(set(window.direct_failed))[:3],
        "heartbeat_gap_max_s": round(max(gaps, default=0), 1),
        "fewest_nodes_in_status": window.fewest_nodes,
        "status_reads_failed": window.status_failed,
    }


async def leaders(client: Client) -> dict[str, str]:
    found = {}
    for stream in STREAMS:
        info = await client.assets.js.stream_info(stream)
        found[stream] = info.cluster.leader if info.cluster else ""
    return found


async def whole(client: Client, cluster: EmbeddedCluster, deadline_s: float = 60) -> None:
    """Every server up and every stream with a leader and its replicas current."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            infos = [await client.assets.js.stream_info(s) for s in STREAMS]
            current = all(
                info.cluster
                and info.cluster.leader
                and all(r.current for r in info.cluster.replicas or [])
                and len(info.cluster.replicas or []) == 2
                for info in infos
            )
            if current and not cluster.died():
                return
        except Exception:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError("the cluster did not become whole again")


@contextmanager
def running_lattice() -> Iterator[tuple[LocalLattice, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    local = LocalLattice(
        state_dir=Path(tempfile.mkdtemp(prefix="sp-failover-")),
        servers=3,
        workers=3,
        slots=2,
        drain_grace_s=2,
    )
    try:
        asyncio.run_coroutine_threadsafe(local.start(), loop).result(timeout=120)
        yield local, loop
    finally:
        asyncio.run_coroutine_threadsafe(local.stop(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def run(rounds: int, observe_s: float) -> list[dict[str, Any]]:
    out = []
    with running_lattice() as (local, loop):
        assert isinstance(local.server, EmbeddedCluster)
        cluster = local.server

        def on_loop(coro: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)

        watcher = on_loop(Client.open(local.url))
        client = sp.connect(local.url, show_logs=False)
        sp_tasks.noop.remote(0)
        sp_tasks.sleep_ms.spawn(5).result()
        load = Load(loop, local.url)
        load.start()
        try:
            for _ in range(rounds):
                for name, stream, sig in SCENARIOS:
                    on_loop(whole(watcher, cluster))
                    time.sleep(3)
                    victim = on_loop(leaders(watcher))[stream]
                    load.window = Window()
                    process = cluster.named(victim).process
                    assert process is not None
                    process.send_signal(sig)
                    time.sleep(observe_s)
                    result = {"scenario": name, "killed": victim, **summary(load.window)}
                    print(json.dumps(result), file=sys.stderr, flush=True)
                    out.append(result)
        finally:
            load.join()
            client.close()
            on_loop(watcher.aclose())
    return out


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | durable max | direct max | direct failed | heartbeat gap max "
        "| fewest nodes in status | status reads failed |\n|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {r['scenario']} ({r['killed']}) | {r['durable_max_ms'] / 1000:.1f} s "
        f"| {r['direct_max_ms'] / 1000:.1f} s | {r['direct_failed']} of {r['direct_calls']} "
        f"| {r['heartbeat_gap_max_s']:.1f} s | {r['fewest_nodes_in_status']} of 3 "
        f"| {r['status_reads_failed']} |"
        for r in results
    ]
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--observe", type=float, default=20.0, help="seconds after each kill")
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    ns = parser.parse_args()
    results = run(ns.rounds, ns.observe)
    print(json.dumps(results, indent=2) if ns.json else table(results))


if __name__ == "__main__":
    main()
