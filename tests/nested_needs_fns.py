"""Functions that make nested calls from inside an executor (its own NATS user):
durable and direct calls with needs, a by-name spawn, a map."""

from __future__ import annotations

import sys
from typing import Any

import superpose as sp
from superpose.client import session

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
"""A label every node of the test lattice has."""


@sp.function
def double(x: int) -> int:
    return x * 2


@sp.function
def with_needs(x: int) -> dict[str, Any]:
    placed = double.options(needs={"python": PYTHON})
    return {"spawned": placed.spawn(x).result(timeout=60), "direct": placed.remote(x)}


@sp.function
def spawn_by_name(name: str, arg: str) -> Any:
    client = session.node_client()
    assert client is not None
    return client.function(name).spawn(arg).result(timeout=60)


@sp.function
def mapped(n: int) -> list[int]:
    return list(double.map(range(n)))


@sp.function
def with_unmet_needs() -> str:
    try:
        double.options(needs={"gpu": "99"}).spawn(1).result(timeout=60)
    except sp.SuperposeError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "placed"
