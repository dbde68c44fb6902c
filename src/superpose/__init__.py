"""superpose: plain Python functions on a lattice of generic nodes.

    import superpose as sp

    @sp.function
    def square(x: int) -> int:
        return x * x

    with sp.connect():
        print(square.remote(7))

Names are imported on first use, so the ``superpose`` command and node
processes do not pay for what they never touch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from superpose.support.lazy_imports import defer_unused_imports

defer_unused_imports()  # before anything imports nats-py

if TYPE_CHECKING:
    from superpose.public import (
        ALL_COMPLETED,
        FIRST_COMPLETED,
        FIRST_EXCEPTION,
        ArgumentError,
        CallTimeoutError,
        Client,
        Cron,
        DeployError,
        Dict,
        Function,
        Future,
        LatticeError,
        LinkedApp,
        NoNodesError,
        NotFoundError,
        ObjectLostError,
        Period,
        Queue,
        Ref,
        RemoteError,
        RemoteFunction,
        SerializationError,
        SuperposeError,
        UncachedWarning,
        UntrustedError,
        UpstreamError,
        UserError,
        as_completed,
        connect,
        function,
        gather,
        get,
        on_start,
        put,
        use,
        wait,
    )

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "ArgumentError",
    "CallTimeoutError",
    "Client",
    "Cron",
    "DeployError",
    "Dict",
    "Function",
    "Future",
    "LatticeError",
    "LinkedApp",
    "NoNodesError",
    "NotFoundError",
    "ObjectLostError",
    "Period",
    "Queue",
    "Ref",
    "RemoteError",
    "RemoteFunction",
    "SerializationError",
    "SuperposeError",
    "UncachedWarning",
    "UntrustedError",
    "UpstreamError",
    "UserError",
    "as_completed",
    "connect",
    "function",
    "gather",
    "get",
    "on_start",
    "put",
    "use",
    "wait",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'superpose' has no attribute {name!r}")
    value = getattr(importlib.import_module("superpose.public"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Only the public names: ``dir(sp)`` and tab completion must not offer the
    subpackages Python binds here as they are imported, nor this module's helpers."""
    return sorted(__all__)
