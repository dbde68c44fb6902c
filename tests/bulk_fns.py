"""Functions of the 1 GB soak (``tests/test_soak_bulk.py``): they read and make a big
object and say how many bytes reached their node's NATS connections meanwhile."""

from __future__ import annotations

import superpose as sp


def _nats_bytes_in() -> int:
    """Bytes this executor's lattice connections have received since they opened."""
    from superpose.client import session

    client = session.node_client()
    assert client is not None, "runs on a node"
    return int(client.nc.stats["in_bytes"])


@sp.function(timeout=600)
def measure(blob: bytes) -> tuple[int, int, int]:
    """Its argument's size, a byte from its end, and the NATS bytes received so far."""
    return len(blob), blob[-1], _nats_bytes_in()


@sp.function(timeout=600)
def make(n: int) -> tuple[sp.Ref, int]:
    """An object of ``n`` bytes made here, returned by reference."""
    blob = bytearray(n)
    blob[-1] = 7
    return sp.put(bytes(blob)), _nats_bytes_in()
