"""Wire messages: round trips and loud failures on foreign or old messages."""

from __future__ import annotations

import msgpack
import pytest

from superpose import protocol


def _invocation() -> protocol.Invocation:
    return protocol.Invocation(
        id="abc",
        app="shop",
        fn="checkout",
        digest="d" * 64,
        module="checkout",
        qualname="checkout",
        args=protocol.Payload(codec=protocol.CODEC_JSON, data=b"{}", size=2),
        deadline=123.0,
        ctx=protocol.CallContext(log_to="_SP.x.log", depth=2),
    )


def test_invocation_round_trips() -> None:
    inv = _invocation()
    assert protocol.Invocation.decode(inv.encode()) == inv


def test_result_round_trips_with_value_or_error() -> None:
    ok = protocol.Result(id="a", node="n1", value=protocol.Payload(codec="json", data=b"1"))
    assert protocol.Result.decode(ok.encode()) == ok
    bad = protocol.Result(id="a", node="n1", error=protocol.ErrorInfo("raised", "E", "m", "tb"))
    assert protocol.Result.decode(bad.encode()) == bad


def test_a_message_of_another_type_fails_loudly() -> None:
    with pytest.raises(ValueError, match=r"expected a sp\.result\.v1"):
        protocol.Result.decode(_invocation().encode())
    with pytest.raises(ValueError, match="untagged"):
        protocol.Invocation.decode(protocol.pack({"id": "x"}))


def test_names_must_be_subject_safe() -> None:
    assert protocol.is_valid_name("shop_2-a")
    for bad in ("", "a.b", "a b", "*", ">", "1abc", "x" * 65):
        assert not protocol.is_valid_name(bad)


def test_http_messages_round_trip() -> None:
    request = protocol.HttpRequest(
        method="POST",
        path="/site/greet",
        raw_path=b"/site/greet",
        query=b"a=1",
        root_path="/site",
        headers=[[b"content-type", b"text/plain"]],
        body=b"\x00\xff",
        client=["127.0.0.1", 5000],
    )
    assert protocol.HttpRequest.decode(request.encode()) == request
    response = protocol.HttpResponse(200, [[b"x-a", b"1"], [b"x-a", b"2"]], b"ok", parts=0)
    assert protocol.HttpResponse.decode(response.encode()) == response
    part = protocol.HttpPart(0, b"chunk", status=201, headers=[[b"x", b"y"]])
    assert protocol.HttpPart.decode(part.encode()) == part
    with pytest.raises(ValueError, match=r"expected a sp\.http\.part\.v1"):
        protocol.HttpPart.decode(response.encode())


def test_a_stream_subject_belongs_to_its_client() -> None:
    subject = protocol.http_stream_subject("c0ffee", "c0ffee1a")
    assert subject == "_SP.c0ffee.s.c0ffee1a"
    assert subject.startswith(protocol.http_stream_wildcard("c0ffee")[:-1])


def test_durable_notifications_pack_results_under_the_size_limit() -> None:
    small = [protocol.Result(f"id{i}", "n1").encode() for i in range(1000)]
    big = [b"x" * (200 * 1024)] * 7
    for encoded in (small, big, small[:1], []):
        messages = protocol.pack_results(encoded)
        assert all(len(m) <= protocol.NOTIFY_MAX_BYTES + 64 for m in messages)
        assert [e for m in messages for e in protocol.unpack_results(m)] == encoded
    assert len(protocol.pack_results(small)) == 1
    assert len(protocol.pack_results(big)) == 4  # two 200 KiB results per message


def test_a_garbled_durable_notification_is_refused() -> None:
    with pytest.raises(ValueError, match="array of results"):
        protocol.unpack_results(protocol.pack({"t": "x"}))
    with pytest.raises(ValueError, match="array of results"):
        protocol.unpack_results(msgpack.packb([1, 2]))
