"""Listing a key-value bucket: every live entry, none deleted, and an empty bucket is []."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from conftest import on_fresh_server
from superpose.errors import LatticeError
from superpose.lattice.kv_listing import current_entries


async def _listings(nc: NATS) -> dict[str, object]:
    seen: dict[str, object] = {}
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="listing_test", history=3))
    seen["empty"] = await current_entries(kv)
    await kv.put("a.one", b"1")
    await kv.put("a.one", b"1 again")  # only the last revision is listed
    await kv.put("a.two", b"2")
    await kv.put("b.three", b"3")
    await kv.put("gone", b"x")
    await kv.delete("gone")
    await kv.put("purged", b"x")
    await kv.purge("purged")
    seen["all"] = await current_entries(kv)
    seen["a"] = await current_entries(kv, "a.>")
    seen["headers"] = await current_entries(kv, meta_only=True)
    seen["none_match"] = await current_entries(kv, "c.>")
    for n in range(20):  # the race nats-py's watch lost: list right after a put
        fresh = await js.create_key_value(KeyValueConfig(bucket=f"race_{n}"))
        await fresh.put("k", b"v")
        assert [e.key for e in await current_entries(fresh)] == ["k"]
    stale = await js.key_value("race_0")
    await js.delete_key_value("race_0")
    with pytest.raises(LatticeError, match="cannot list KV_race_0"):
        await current_entries(stale)
    return seen


def test_current_entries_lists_live_keys_only(tmp_path: Path) -> None:
    seen = asyncio.run(on_fresh_server(tmp_path, _listings))
    assert seen["empty"] == [] and seen["none_match"] == []
    listed = {e.key: e.value for e in seen["all"]}  # type: ignore[attr-defined]
    assert listed == {"a.one": b"1 again", "a.two": b"2", "b.three": b"3"}
    assert {e.key for e in seen["a"]} == {"a.one", "a.two"}  # type: ignore[attr-defined]
    headers = seen["headers"]
    assert {e.key for e in headers} == set(listed)  # type: ignore[attr-defined]
    assert all(e.value == b"" and e.created > 0 for e in headers)  # type: ignore[attr-defined]
