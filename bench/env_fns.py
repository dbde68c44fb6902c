"""The environments workload's function (``bench/environments.py``): it imports numpy,
which only the environment it runs with has."""

from __future__ import annotations

import superpose as sp


@sp.function
def numpy_version() -> str:
    import numpy

    return str(numpy.__version__)
