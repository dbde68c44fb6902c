"""Functions of the object-reference benchmark (``bench/refs.py``), shipped in script mode."""

from __future__ import annotations

import superpose as sp


@sp.function
def length(data: bytes) -> int:
    return len(data)


@sp.function
def make(n: int) -> sp.Ref:
    """A Ref to ``n`` bytes, held by the executor that made it."""
    return sp.put(b"r" * n)


@sp.function
def make_bytes(n: int) -> bytes:
    return b"r" * n
