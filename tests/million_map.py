"""A map over a million items in its own process, so its peak memory is its own.

Usage: python million_map.py LATTICE_URL CONSUME [WINDOW]; prints a JSON line with
how many items the map drew from its generator, the results consumed, and peak RSS.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator

import durable_fns as dfns
import superpose as sp

TOTAL = 1_000_000


def _peak_rss_mb() -> float:
    """VmHWM: this process image's own peak (ru_maxrss can carry a forking parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    url, consume = sys.argv[1], int(sys.argv[2])
    window = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
    drawn = 0

    def items() -> Iterator[int]:
        nonlocal drawn
        for i in range(TOTAL):
            drawn += 1
            yield i

    started = time.monotonic()
    with sp.connect(url, show_logs=False):
        results = dfns.noop.map(items(), window=window)
        for expected in range(consume):
            got = next(results)
            if got != expected:
                raise SystemExit(f"item {expected} came back as {got}")
        results.close()  # type: ignore[attr-defined]
        elapsed = time.monotonic() - started
    peak_mb = _peak_rss_mb()
    print(
        json.dumps(
            {"drawn": drawn, "consumed": consume, "peak_rss_mb": peak_mb, "seconds": elapsed}
        )
    )


if __name__ == "__main__":
    main()
