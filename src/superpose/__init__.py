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
    from superpose.client.client import Client, connect
    from superpose.client.functions import Function, LinkedApp, RemoteFunction, function, use
    from superpose.client.futures import Future, gather
    from superpose.errors import (
        CallTimeoutError,
        DeployError,
        LatticeError,
        NoNodesError,
        NotFoundError,
        RemoteError,
        SuperposeError,
        UserError,
    )

_WHERE = {
    "Client": "superpose.client.client",
    "connect": "superpose.client.client",
    "CallTimeoutError": "superpose.errors",
    "DeployError": "superpose.errors",
    "LatticeError": "superpose.errors",
    "NoNodesError": "superpose.errors",
    "NotFoundError": "superpose.errors",
    "RemoteError": "superpose.errors",
    "SuperposeError": "superpose.errors",
    "UserError": "superpose.errors",
    "Function": "superpose.client.functions",
    "RemoteFunction": "superpose.client.functions",
    "function": "superpose.client.functions",
    "use": "superpose.client.functions",
    "LinkedApp": "superpose.client.functions",
    "Future": "superpose.client.futures",
    "gather": "superpose.client.futures",
}

__all__ = [
    "CallTimeoutError",
    "Client",
    "DeployError",
    "Function",
    "Future",
    "LatticeError",
    "LinkedApp",
    "NoNodesError",
    "NotFoundError",
    "RemoteError",
    "RemoteFunction",
    "SuperposeError",
    "UserError",
    "connect",
    "function",
    "gather",
    "use",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'superpose' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
