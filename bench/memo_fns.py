"""The memo workload's functions (``bench/memo.py``): cached, with and without work."""

from __future__ import annotations

import hashlib

import superpose as sp


@sp.function(cache=True)
def noop(salt: str, i: int) -> int:
    return i


@sp.function(cache=True)
def digest(salt: str, i: int, rounds: int) -> str:
    """About 5 ms of CPU per 20,000 rounds here: a task worth caching."""
    h = hashlib.sha256(f"{salt}{i}".encode()).digest()
    for _ in range(rounds):
        h = hashlib.sha256(h).digest()
    return h.hex()


@sp.function(cache=True)
def combine(left: str, right: str) -> str:
    """An inner node of the memo dataflow: cheap, and keyed by its inputs' keys."""
    return hashlib.sha256(f"{left}{right}".encode()).hexdigest()
