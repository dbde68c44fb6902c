"""One small module per engine; ``load`` imports only the one asked for."""

from __future__ import annotations

import importlib
import importlib.util

from bench.engines.base import Engine

MODULES = {
    "superpose": "bench.engines.superpose_engine",
    "ray": "bench.engines.ray_engine",
    "dask": "bench.engines.dask_engine",
    "processpool": "bench.engines.pool_engine",
    "nats": "bench.engines.nats_engine",
}

REQUIRES = {"ray": ("ray",), "dask": ("dask", "distributed")}
"""Optional libraries (``pip install -e .[bench]``); the engine is skipped without them."""


def installed(name: str) -> bool:
    return all(importlib.util.find_spec(lib) is not None for lib in REQUIRES.get(name, ()))


def load(name: str) -> Engine:
    module = importlib.import_module(MODULES[name])
    engine: Engine = module.make()
    return engine
