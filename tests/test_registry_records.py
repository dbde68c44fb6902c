"""The registry bucket's JSON records: typed in protocol.py, read back from older writers,
and a malformed one skipped without stopping the mirror that reads it."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest

from conftest import Lattice
from superpose import protocol
from superpose.lattice.connection import connect, ensure_assets
from superpose.registry.mirror import Registry


def test_records_written_by_the_older_json_code_read_back_the_same() -> None:
    version = {
        "app": "shop",
        "digest": "ab" * 32,
        "created": 1.5,
        "size": 10,
        "files": {"a.py": "cd" * 32},
        "functions": {"quote": {"module": "a", "qualname": "quote", "options": {}}},
        "kind": "functions",
    }
    older = json.dumps(version, sort_keys=True).encode()  # what dataclasses wrote
    assert protocol.Version.from_json(older) == protocol.Version(**version)
    # Written anew it gains the fields added since, at their defaults ("" = no environment).
    fresh = {**version, "env": "", "signer": "", "sig": ""}  # unsigned: never routed to
    assert json.loads(protocol.Version(**version).as_json()) == fresh
    canary = protocol.Canary.from_json(b'{"key": null, "percent": 10, "version": "v2"}')
    assert canary == protocol.Canary(version="v2", percent=10.0)
    assert protocol.decode_string_map(b'{"pricing": "3f2a91"}', "lock") == {"pricing": "3f2a91"}
    manifest = json.dumps({"files": {"a.py": "ab" * 32}}, sort_keys=True).encode()
    assert protocol.BundleManifest.from_json(manifest).files == {"a.py": "ab" * 32}


@pytest.mark.parametrize(
    "data", [b"not json", b"[]", b'{"version": 3, "percent": "ten"}', b'{"percent": 1}']
)
def test_a_malformed_record_is_one_protocol_error(data: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="malformed Canary record"):
        protocol.Canary.from_json(data)


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"pricing": 1}'])
def test_a_malformed_lock_is_one_protocol_error(data: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="malformed lock"):
        protocol.decode_string_map(data, "lock")


def test_a_malformed_entry_is_skipped_and_the_mirror_reads_on(
    lattice: Lattice, caplog: pytest.LogCaptureFixture
) -> None:
    app = f"bad{uuid.uuid4().hex[:8]}"

    async def main() -> tuple[dict[str, protocol.Canary], dict[str, dict[str, str]]]:
        nc = await connect(lattice.url, name="test-registry")
        try:
            kv = (await ensure_assets(nc)).registry
            await kv.put(protocol.canary_key(app), b"{not json")
            await kv.put(protocol.lock_key(app), protocol.encode_string_map({"dep": "d1"}))
            registry = Registry(kv)
            await asyncio.wait_for(registry.start(), 10)  # synced past the bad entry
            await registry.stop()
            await kv.delete(protocol.canary_key(app))
            await kv.delete(protocol.lock_key(app))
            return registry.canaries, registry.locks
        finally:
            await nc.close()

    with caplog.at_level(logging.WARNING, logger="superpose.registry"):
        canaries, locks = asyncio.run(main())
    assert app not in canaries
    assert locks[app] == {"dep": "d1"}
    assert f"skipping registry entry canary.{app}: malformed Canary record" in caplog.text
