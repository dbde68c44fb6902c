"""superpose: plain Python functions on a lattice of generic nodes.

import superpose as sp

@sp.function
def square(x: int) -> int:
    return x * x

with sp.connect():
    print(square.remote(7))
"""

from superpose.client import Client, connect
from superpose.errors import (
    CallTimeoutError,
    DeployError,
    NoNodesError,
    NotFoundError,
    RemoteError,
    SuperposeError,
    UserError,
)
from superpose.function import Function, RemoteFunction, function
from superpose.futures import Future, gather

__all__ = [
    "CallTimeoutError",
    "Client",
    "DeployError",
    "Function",
    "Future",
    "NoNodesError",
    "NotFoundError",
    "RemoteError",
    "RemoteFunction",
    "SuperposeError",
    "UserError",
    "connect",
    "function",
    "gather",
]
