"""What the gateway's token check costs: ``.venv/bin/python bench/gateway_tokens.py``.

Two figures. The check alone (``auth.check`` on one request's scope, a valid token,
the route that is last in ``auth.RULES``), best of several runs. And a request loop:
a private lattice (no nodes) and two gateways in this process, the same app with
and without ``TokenGate``, each answering ``GET`` requests from one keep-alive client
in a thread; the difference of their medians is what a request pays for its token.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from superpose.gateway import auth  # noqa: E402
from superpose.gateway.app import create_app  # noqa: E402
from superpose.lattice import tokens  # noqa: E402
from superpose.local.embedded import free_port  # noqa: E402
from superpose.local.lattice import LocalLattice  # noqa: E402


def check_cost_us(rounds: int) -> float:
    """Microseconds per ``auth.check`` of a valid caller token, best of five runs."""
    text, record = tokens.mint("caller")
    book = auth.TokenBook()
    book._apply(record.id, record.as_json(), False)
    scope = {
        "type": "http",
        "method": "DELETE",
        "path": "/v1/invocations/abc.1",
        "headers": [(b"host", b"x"), (b"authorization", f"Bearer {text}".encode())],
    }
    runs = timeit.repeat(lambda: auth.check(book, scope), number=rounds, repeat=5)
    return min(runs) / rounds * 1e6


def request_loop_ms(url: str, path: str, token: str, requests: int) -> list[float]:
    """Milliseconds of each of ``requests`` sequential GETs on one connection."""
    times: list[float] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(50):  # warm-up: connection, caches
            http.get(path)
        for _ in range(requests):
            started = time.perf_counter()
            response = http.get(path)
            times.append((time.perf_counter() - started) * 1e3)
            assert response.status_code in (200, 404), response.text
    return times


async def serve_and_measure(
    lattice_url: str, gated: bool, path: str, token: str, requests: int
) -> list[float]:
    app = create_app(lattice_url)
    if not gated:
        app.user_middleware.clear()  # the stack is built on the first request
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    found: list[list[float]] = []
    thread = threading.Thread(
        target=lambda: found.append(
            request_loop_ms(f"http://127.0.0.1:{port}", path, token, requests)
        )
    )
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.05)
    server.should_exit = True
    await task
    return found[0]


async def main(requests: int, rounds: int) -> None:
    print(f"auth.check: {check_cost_us(rounds):.2f} µs per request (best of 5 × {rounds})")
    lattice = LocalLattice(state_dir=Path(tempfile.mkdtemp()), workers=0, gateway_port=0)
    url = await lattice.start()
    try:
        assert lattice.gateway_token is not None
        token = lattice.gateway_token.read_text().strip()
        for path in ("/v1/apps/nosuch", "/v1/status"):
            medians = {}
            for gated in (False, True, False, True):  # interleaved: drift hits both alike
                times = await serve_and_measure(url, gated, path, token, requests)
                medians.setdefault(gated, []).append(statistics.median(times))
            before, after = min(medians[False]), min(medians[True])
            print(
                f"GET {path}: {before:.3f} ms without the check, {after:.3f} ms with it "
                f"(median of {requests}, best of 2): {(after - before) * 1e3:+.0f} µs"
            )
    finally:
        await lattice.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20000)
    ns = parser.parse_args()
    asyncio.run(main(ns.requests, ns.rounds))
