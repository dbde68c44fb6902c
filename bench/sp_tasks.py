"""The workload functions as ``@sp.function``s; shipped to nodes in script mode."""

from __future__ import annotations

from typing import Any

import superpose as sp
from bench import workloads


@sp.function
def noop(x: Any = None) -> Any:
    return x


@sp.function
def sleep_ms(ms: float) -> float:
    return workloads.sleep_ms(ms)


@sp.function
def burn(iterations: int) -> int:
    return workloads.burn(iterations)


@sp.function
def echo_len(data: bytes) -> int:
    return len(data)


@sp.function
def make_bytes(n: int) -> bytes:
    return workloads.make_bytes(n)


@sp.function
def identity(data: Any) -> Any:
    return data


@sp.function
def mergesort(xs: list[float], depth: int) -> list[float]:
    if depth == 0 or len(xs) <= 1:
        return sorted(xs)
    mid = len(xs) // 2
    left = mergesort.spawn(xs[:mid], depth - 1)
    right = mergesort.spawn(xs[mid:], depth - 1)
    a, b = sp.gather(left, right)
    return workloads.merge(a, b)


TASKS = {
    "noop": noop,
    "sleep_ms": sleep_ms,
    "burn": burn,
    "echo_len": echo_len,
    "make_bytes": make_bytes,
    "identity": identity,
}
