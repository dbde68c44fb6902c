"""The sandbox workload's function (``bench/sandbox.py``): as little as a call can do."""

from __future__ import annotations

import superpose as sp


@sp.function
def noop(x: int) -> int:
    return x
