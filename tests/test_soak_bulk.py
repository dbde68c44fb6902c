"""Bulk soak (``make soak``; issue 16, item 3): a 1 GiB object goes to a function and
another comes back, by reference, and neither crosses the broker: the caller's and
the executor's NATS connections carry kilobytes, not the gigabyte (one host: the
bytes take host-local shared memory, ``lattice/shm.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

import bulk_fns
import superpose as sp
from conftest import client_on, start_lattice, stop_lattice

pytestmark = [pytest.mark.soak, pytest.mark.timeout(900)]

GIB = 1 << 30
SMALL = 64 << 20
"""What "did not cross the broker" allows each connection: far below the gigabyte."""


def test_a_gigabyte_in_and_out_by_reference(tmp_path: Path) -> None:
    handle = start_lattice(tmp_path / "lattice", workers=1, gateway=False)
    try:
        with client_on(handle) as client:
            sent_before = client.nc.stats["out_bytes"]
            blob = bytearray(GIB)
            blob[-1] = 9
            ref = sp.put(bytes(blob))
            del blob
            size, last, executor_in = bulk_fns.measure.remote(ref)
            assert (size, last) == (GIB, 9)
            assert client.nc.stats["out_bytes"] - sent_before < SMALL
            assert executor_in < SMALL  # its arguments did not come over NATS

            received_before = client.nc.stats["in_bytes"]
            made, executor_in = bulk_fns.make.remote(GIB)
            value = sp.get(made)
            assert len(value) == GIB and value[-1] == 7
            assert client.nc.stats["in_bytes"] - received_before < SMALL
            assert executor_in < SMALL
    finally:
        stop_lattice(handle)
