"""Raw nats-py request/reply: the messaging floor under any NATS-based runtime.

A private nats-server (no JetStream) and one responder process that runs each
request's task inline and replies; the client sends pickled ``(task, args)``.
Run as ``python -m bench.engines.nats_engine respond URL`` for the responder.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import workloads
from bench.engines.base import Engine

SUBJECT = "bench.task"
MAX_PAYLOAD = 64 * 1024 * 1024
REQUEST_TIMEOUT_S = 600.0
READY_TIMEOUT_S = 20.0


@dataclass
class Batch:
    total: int
    done: int = 0
    future: concurrent.futures.Future[list[Any]] = field(default_factory=concurrent.futures.Future)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsEngine(Engine):
    name = "nats"
    workloads = frozenset({"cold", "latency", "throughput", "data"})
    big_data = False

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.responder: subprocess.Popen[bytes] | None = None
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.nc: Any = None

    def start(self) -> None:
        import nats

        from superpose.local.embedded import find_nats_server

        self.dir = Path(tempfile.mkdtemp(prefix="bench-nats-"))
        url = self._start_server(find_nats_server())
        self.responder = subprocess.Popen(
            [sys.executable, "-m", "bench.engines.nats_engine", "respond", url],
            stdin=subprocess.DEVNULL,
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc = self._run(nats.connect(url, max_reconnect_attempts=-1))
        self._wait_for_responder()

    def _start_server(self, binary: str) -> str:
        assert self.dir is not None
        port = _free_port()
        conf = self.dir / "nats.conf"
        conf.write_text(f"listen: 127.0.0.1:{port}\nmax_payload: {MAX_PAYLOAD}\n")
        log = open(self.dir / "nats.log", "ab")  # noqa: SIM115 - the child owns it
        self.server = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"nats://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.005)
        raise RuntimeError("nats-server did not open its port")

    def _wait_for_responder(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                self._run(self._request("noop", (None,), timeout_s=0.1))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _request(
        self, task: str, args: tuple[Any, ...], timeout_s: float = REQUEST_TIMEOUT_S
    ) -> Any:
        msg = await self.nc.request(
            SUBJECT, pickle.dumps((task, args), protocol=5), timeout=timeout_s
        )
        return pickle.loads(msg.data)

    def stop(self) -> None:
        if self.nc is not None:
            self._run(self.nc.close())
            self.nc = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(timeout=5)
        for proc in (self.responder, self.server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def call(self, task: str, *args: Any) -> Any:
        return self._run(self._request(task, args))

    def submit(self, task: str, args: Sequence[tuple[Any, ...]]) -> Batch:
        batch = Batch(total=len(args))

        async def one(a: tuple[Any, ...]) -> Any:
            result = await self._request(task, a)
            batch.done += 1
            return result

        async def many() -> list[Any]:
            return list(await asyncio.gather(*(one(a) for a in args)))

        batch.future = asyncio.run_coroutine_threadsafe(many(), self.loop)
        return batch

    def wait(self, batch: Batch, timeout_s: float) -> int:
        concurrent.futures.wait([batch.future], timeout=timeout_s)
        return batch.total if batch.future.done() else batch.done

    def results(self, batch: Batch) -> list[Any]:
        return batch.future.result()

    def cancel(self, batch: Batch) -> None:
        batch.future.cancel()

    def info(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {"nats-py": version("nats-py"), "responders": 1, "max_payload": MAX_PAYLOAD}


async def _respond(url: str) -> None:
    """The responder: one process, each task run inline, one reply per request."""
    import nats

    nc = await nats.connect(url)

    async def on_request(msg: Any) -> None:
        task, args = pickle.loads(msg.data)
        result = workloads.TASKS[task](*args)
        await msg.respond(pickle.dumps(result, protocol=5))

    await nc.subscribe(SUBJECT, cb=on_request, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await asyncio.Event().wait()


def make() -> Engine:
    return NatsEngine()


if __name__ == "__main__" and sys.argv[1:2] == ["respond"]:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(_respond(sys.argv[2]))
