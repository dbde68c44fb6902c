"""What signed code costs: the warm call (verdicts cached), resolving a name, and a
node's check before a cold load.

``python -m bench.signing [CALLS]`` starts a private ``superpose up`` lattice (2 nodes ×
1 slot), deploys one app and prints:

- warm ``remote()`` p50 with verification as shipped, and with the client's version check
  replaced by a no-op (interleaved rounds, so drift hits both alike);
- ``Registry.resolve`` per call, cached verdict vs. no check (µs);
- one Ed25519 verify, and a node's cold-load check (manifest read + verify) (ms).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sp_only import _cli, _running_lattice, _write_app

ROUNDS = 6


def _p50_ms(handle: Any, calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        handle.remote()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _resolve_us(registry: Any, app: str, n: int = 20_000) -> float:
    started = time.perf_counter()
    for _ in range(n):
        registry.resolve(app, "answer")
    return (time.perf_counter() - started) / n * 1e6


def main(calls: int = 1000) -> None:
    from superpose.code import signing_manifest
    from superpose.lattice import signing
    from superpose.node.code_trust import CodeTrust
    from superpose.registry.mirror import Registry
    from superpose.registry.trust import TrustedKeys

    with _running_lattice() as (client, home):
        folder = _write_app(Path(tempfile.mkdtemp()) / "signed_bench", "t")
        _cli(home, "deploy", str(folder))
        handle = client.function("signed_bench.answer")
        handle.remote()
        registry = client.run(client.registry())
        checked = Registry._trusted
        on, off = [], []
        for _ in range(ROUNDS):
            on.append(_p50_ms(handle, calls))
            Registry._trusted = lambda self, version: version  # type: ignore[method-assign]
            off.append(_p50_ms(handle, calls))
            Registry._trusted = checked  # type: ignore[method-assign]
        with_check = _resolve_us(registry, "signed_bench")
        Registry._trusted = lambda self, version: version  # type: ignore[method-assign]
        without = _resolve_us(registry, "signed_bench")
        Registry._trusted = checked  # type: ignore[method-assign]

        signer = signing.Signer(signing.new_seed())
        sig = signer.sign(b"x" * 200)
        started = time.perf_counter()
        for _ in range(2000):
            signing.verify(signer.public_key, b"x" * 200, sig)
        verify_us = (time.perf_counter() - started) / 2000 * 1e6

        target = registry.resolve("signed_bench", "answer")

        async def cold_checks() -> list[float]:
            trust = TrustedKeys(client.assets.trust)
            await trust.start()
            times = []
            for _ in range(50):
                check = CodeTrust(trust)
                inv = type("Inv", (), {"digest": target.digest, "app": "x", "fn": "y"})()
                started = time.perf_counter()
                await check.check(client.nc, inv, 5.0)  # type: ignore[arg-type]
                times.append((time.perf_counter() - started) * 1000)
            await trust.stop()
            await signing_manifest.fetch(client.nc, target.digest)
            return times

        cold = client.run(cold_checks())
    print(f"warm remote() p50, {ROUNDS} rounds of {calls}: verified {statistics.median(on):.3f} ms")
    print(f"  (rounds {', '.join(f'{x:.3f}' for x in on)})")
    print(f"  with the version check off: {statistics.median(off):.3f} ms")
    print(f"  (rounds {', '.join(f'{x:.3f}' for x in off)})")
    print(f"resolve(): {with_check:.2f} µs checked (cached verdict), {without:.2f} µs unchecked")
    print(f"one Ed25519 verify: {verify_us:.1f} µs")
    print(f"node cold-load check (manifest read + verify): p50 {statistics.median(cold):.2f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
