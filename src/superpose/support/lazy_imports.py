"""Defer imports that superpose's dependencies make at start-up and rarely use.

nats-py imports aiohttp whenever it is installed, only to offer a WebSocket
transport that superpose never uses. Where aiohttp is installed (Ray, for one,
pulls it in) that import cost 0.1-0.2 s in every superpose process: the
caller, each node agent and each executor, and a cold start waits on three of
them in a row. Registered as a deferred module, ``import aiohttp`` is free and
the module's code runs on its first attribute access, so code that does use
aiohttp sees no difference.

Not ``importlib.util.LazyLoader``: on Python 3.11 an ``import`` statement reads
the module's ``__spec__``, which makes a LazyLoader module load at once.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from typing import Any

DEFERRED = ("aiohttp",)
_LOCK = threading.RLock()


class _DeferredModule(types.ModuleType):
    """Runs its module's code into itself on the first attribute it lacks."""

    def __getattr__(self, name: str) -> Any:
        with _LOCK:  # re-entrant: the module's own code may probe itself while it runs
            if not self.__dict__.get("_superpose_loading"):
                self.__dict__["_superpose_loading"] = True
                spec = self.__spec__
                assert spec is not None and spec.loader is not None
                spec.loader.exec_module(self)
        return object.__getattribute__(self, name)


def defer_unused_imports() -> None:
    """Register each module of ``DEFERRED`` that is installed and not yet imported as
    deferred (its submodules import as usual)."""
    for name in DEFERRED:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            continue
        module = importlib.util.module_from_spec(spec)
        module.__class__ = _DeferredModule
        sys.modules[name] = module
