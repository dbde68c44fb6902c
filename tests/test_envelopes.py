"""How a burst of durable submissions is packed into envelopes (no lattice needed)."""

from __future__ import annotations

import pytest

from superpose import config, protocol
from superpose.client.durable import ENVELOPE_MAX_BYTES, Durable, _envelopes
from superpose.client.futures import Future
from superpose.errors import SettingError


def _durable(fn: str, size: int, key: str | None = None) -> Durable:
    inv = protocol.Invocation(
        id=f"c.{fn}{size}",
        app="app",
        fn=fn,
        digest="d",
        module="m",
        qualname=fn,
        args=protocol.Payload(codec=protocol.CODEC_PICKLE, data=b"x" * size, size=size),
        deadline=0.0,
    )
    future = Future()
    future.idempotency_key = key
    return Durable(future, inv, b"")


def test_a_burst_is_packed_by_count_and_split_by_function() -> None:
    burst = [_durable("f", 10) for _ in range(64)] + [_durable("g", 10) for _ in range(64)]
    groups = _envelopes(burst)
    assert all(len(g) == 128 // 16 for g in groups)  # a burst of n: n/16 per envelope
    assert all(len({d.inv.fn for d in g}) == 1 for g in groups)
    assert sum(len(g) for g in groups) == 128


def test_envelopes_stay_under_the_byte_cap_whatever_the_count() -> None:
    big = 200 * 1024  # under the spill threshold, so it travels inline
    groups = _envelopes([_durable("f", big) for _ in range(64)])
    assert all(sum(len(d.inv.args.data or b"") for d in g) <= ENVELOPE_MAX_BYTES for g in groups)
    assert sum(len(g) for g in groups) == 64


def test_a_keyed_submission_travels_alone() -> None:
    burst = [_durable("f", 10) for _ in range(40)]
    burst[5] = _durable("f", 11, key="order-1")
    groups = _envelopes(burst)
    keyed = [g for g in groups if any(d.future.idempotency_key for d in g)]
    assert keyed == [[burst[5]]]


def test_a_bad_max_deliver_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV_MAX_DELIVER, raising=False)
    assert config.settings().max_deliver == config.MAX_DELIVER
    monkeypatch.setenv(config.ENV_MAX_DELIVER, "3")
    assert config.settings().max_deliver == 3
    for bad in ("0", "-1", "three"):
        monkeypatch.setenv(config.ENV_MAX_DELIVER, bad)
        with pytest.raises(SettingError, match=f"{config.ENV_MAX_DELIVER}='{bad}'"):
            config.settings()
