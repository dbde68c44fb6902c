"""The dataflow benchmark's functions (``bench/dataflow.py``), shipped in script mode."""

from __future__ import annotations

import superpose as sp


@sp.function
def leaf(i: int) -> int:
    return i


@sp.function
def add(a: int, b: int) -> int:
    return a + b
