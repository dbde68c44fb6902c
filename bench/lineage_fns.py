"""Functions of the lineage benchmark (``bench/lineage.py``), shipped in script mode."""

from __future__ import annotations

import os

import superpose as sp


@sp.function(idempotent=True)
def produce(n: int, seed: str) -> tuple[sp.Ref, int]:
    """A Ref to ``n`` bytes held by this executor, and its pid (to kill it)."""
    sp.Dict("lineage_bench", shared=True).incr(seed)
    return sp.put(seed.encode() + b"l" * n), os.getpid()


@sp.function
def length(data: bytes) -> int:
    return len(data)
