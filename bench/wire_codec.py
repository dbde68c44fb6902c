"""Microbenchmark of the wire codec: ``.venv/bin/python bench/wire_codec.py``.

Encodes and decodes the two messages every call sends (an ``Invocation`` and its
``Result``), shaped like a client's direct call of a small function, and prints
the best of several runs per operation. Every call pays these four operations at
least once on each side, so they must never get slower.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from superpose import protocol  # noqa: E402


def invocation() -> protocol.Invocation:
    args = pickle.dumps(((21,), {}), protocol=5)
    return protocol.Invocation(
        id="3f9a1c0e5b7d2468.1a2b",
        app="shop",
        fn="checkout",
        digest="d" * 64,
        module="shop.checkout",
        qualname="checkout",
        args=protocol.Payload(codec=protocol.CODEC_PICKLE, data=args, size=len(args)),
        deadline=time.time() + 60,
        ctx=protocol.CallContext(log_to="_SP.3f9a1c0e5b7d2468.r.log", depth=1),
    )


def result() -> protocol.Result:
    value = pickle.dumps(42, protocol=5)
    return protocol.Result(
        id="3f9a1c0e5b7d2468.1a2b",
        node="node-7f3e",
        value=protocol.Payload(codec=protocol.CODEC_PICKLE, data=value, size=len(value)),
        duration_s=0.00123,
    )


def best_us(op: Callable[[], object], number: int, repeat: int) -> float:
    """Microseconds per call, best of ``repeat`` runs (the least disturbed by others)."""
    return min(timeit.repeat(op, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    opts = parser.parse_args()
    inv, res = invocation(), result()
    inv_bytes, res_bytes = inv.encode(), res.encode()
    ops: dict[str, Callable[[], object]] = {
        "Invocation.encode": inv.encode,
        "Invocation.decode": lambda: protocol.Invocation.decode(inv_bytes),
        "Result.encode": res.encode,
        "Result.decode": lambda: protocol.Result.decode(res_bytes),
    }
    print(f"Invocation {len(inv_bytes)} bytes, Result {len(res_bytes)} bytes")
    for name, op in ops.items():
        print(f"{name:<18} {best_us(op, opts.number, opts.repeat):6.2f} µs")


if __name__ == "__main__":
    main()
