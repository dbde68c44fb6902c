"""The node's connection to the lattice, shared by its collaborators.

Made in ``NodeAgent.start`` after the spare executor has begun its own start (the
two overlap), so collaborators built earlier reach it through this handle.
"""

from __future__ import annotations

from typing import Protocol

from nats.aio.client import Client as NATS

from superpose.errors import SuperposeError
from superpose.lattice.connection import Assets


class Connected(Protocol):
    """What a collaborator needs to reach the lattice as this node."""

    @property
    def node_id(self) -> str: ...

    @property
    def nc(self) -> NATS: ...

    @property
    def assets(self) -> Assets: ...


class Link:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._nc: NATS | None = None
        self._assets: Assets | None = None

    def connected(self, nc: NATS) -> None:
        self._nc = nc

    def assets_found(self, assets: Assets) -> None:
        self._assets = assets

    @property
    def is_connected(self) -> bool:
        return self._nc is not None

    @property
    def has_assets(self) -> bool:
        return self._assets is not None

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise SuperposeError(f"node {self.node_id} is not connected to the lattice yet")
        return self._nc

    @property
    def assets(self) -> Assets:
        if self._assets is None:
            raise SuperposeError(f"node {self.node_id} is not connected to the lattice yet")
        return self._assets
