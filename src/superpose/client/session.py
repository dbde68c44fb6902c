"""The process's clients: the one user code calls through when it names none.

On a node that is the executor's client, whose nested calls share the executor's
connection; elsewhere the one ``superpose.connect()`` made. The client layer never
starts a lattice itself: when nothing is connected yet it calls the connector the
public surface installed (``superpose.public.connect``, which may start an embedded
lattice on this machine).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from superpose.errors import SuperposeError

if TYPE_CHECKING:
    from superpose.client.client import Client

lock = threading.Lock()
"""Held while the default client is being chosen or opened: one per process."""
_default: Client | None = None
_node: Client | None = None
_connector: Callable[[], Client] | None = None


def current_client() -> Client:
    """The client calls go through: the node's, the default one, or a new default."""
    if _node is not None:
        return _node
    if _default is not None:
        return _default
    if _connector is None:
        raise SuperposeError(
            "no lattice connection: call superpose.connect() first (or import superpose, "
            "whose connect() opens one on first use)"
        )
    return _connector()


def install_connector(connector: Callable[[], Client]) -> None:
    """How a call with no client opens one (the public ``connect()``)."""
    global _connector
    _connector = connector


def node_client() -> Client | None:
    """The executor's client, when this process is an executor."""
    return _node


def set_node_client(client: Client) -> None:
    global _node
    _node = client


def default_client() -> Client | None:
    return _default


def set_default(client: Client | None) -> None:
    global _default
    _default = client


def forget(client: Client) -> None:
    """A closed client is no longer anyone's default."""
    global _default
    if _default is client:
        _default = None
