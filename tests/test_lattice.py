"""The lattice's own set-up: JetStream assets and their replica count."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from superpose.config import ENV_REPLICAS
from superpose.errors import LatticeError
from superpose.lattice.connection import connect, ensure_assets
from superpose.local.embedded import EmbeddedServer


async def _ensure_on_fresh_server(state_dir: Path) -> None:
    server = EmbeddedServer(state_dir)
    url = await server.start()
    try:
        nc = await connect(url, name="test-lattice")
        try:
            await ensure_assets(nc)
        finally:
            await nc.close()
    finally:
        server.stop()


def test_assets_are_created_on_a_fresh_server(tmp_path: Path) -> None:
    asyncio.run(_ensure_on_fresh_server(tmp_path))


def test_more_replicas_than_servers_is_refused_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_REPLICAS, "3")
    with pytest.raises(LatticeError, match=r"cannot create sp_registry: replicas > 1.*REPLICAS"):
        asyncio.run(_ensure_on_fresh_server(tmp_path))


def test_a_malformed_replica_count_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_REPLICAS, "three")
    with pytest.raises(LatticeError, match="SUPERPOSE_REPLICAS='three'"):
        asyncio.run(_ensure_on_fresh_server(tmp_path))
