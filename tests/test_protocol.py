"""Wire messages: round trips, compatibility with stored messages, and loud failures on
foreign, old or garbled ones."""

from __future__ import annotations

import io
import json
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest

import wire_samples
from superpose import protocol

GOLDEN = Path(__file__).with_name("wire_v1.json")


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
        protocol.Invocation.decode(msgspec.msgpack.encode({"id": "x"}))


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
    with pytest.raises(protocol.ProtocolError, match="array of results"):
        protocol.unpack_results(msgspec.msgpack.encode({"t": "x"}))
    with pytest.raises(protocol.ProtocolError, match="array of results"):
        protocol.unpack_results(msgspec.msgpack.encode([1, 2]))


def _golden() -> dict[str, bytes]:
    return {k: bytes.fromhex(v) for k, v in json.loads(GOLDEN.read_text())["messages"].items()}


def test_messages_stored_before_msgspec_still_decode() -> None:
    """Envelopes, results and dead letters outlive an upgrade in their buckets and
    streams: what the dataclass codec wrote must decode to the same messages."""
    golden = _golden()
    for name, message in wire_samples.messages().items():
        assert type(message).decode(golden[name]) == message, name
    results = protocol.unpack_results(golden["durable_notification"])
    assert results == [golden["result_value"], golden["result_error"]]


_NESTED = {"args": protocol.Payload, "value": protocol.Payload, "ctx": protocol.CallContext}


def _defaults(cls: type[msgspec.Struct]) -> dict[str, Any]:
    found = {}
    for info in msgspec.structs.fields(cls):
        if info.default is not msgspec.NODEFAULT:
            found[info.encode_name] = info.default
        elif info.default_factory is not msgspec.NODEFAULT:
            found[info.encode_name] = info.default_factory()
    return found


def _as_the_old_decoder_saw_it(raw: dict[str, Any], cls: type[msgspec.Struct]) -> dict[str, Any]:
    """A map with its left-out fields put back at their defaults, as the dataclass
    decoders (``cls(**raw)``) filled them in; nested messages likewise."""
    filled = {**_defaults(cls), **raw}
    for key, value in filled.items():
        nested = protocol.ErrorInfo if key == "error" else _NESTED.get(key)
        if nested is not None and isinstance(value, dict):
            filled[key] = _as_the_old_decoder_saw_it(value, nested)
        elif isinstance(value, msgspec.Struct):
            filled[key] = msgspec.to_builtins(value)
    return filled


def test_what_we_encode_reads_as_before_in_a_decoder_of_the_old_codec() -> None:
    """Nodes and clients of the dataclass codec still run during an upgrade: what they
    decode from our messages (their keys, with left-out defaults filled in as they do)
    is what they decoded from their own."""
    golden = _golden()
    for name, message in wire_samples.messages().items():
        ours = msgspec.msgpack.decode(message.encode())
        theirs = msgspec.msgpack.decode(golden[name])
        assert next(iter(ours)) == "t", name  # the tag leads, as it always did
        assert set(ours) <= set(theirs), name  # no key an old decoder would refuse
        cls = type(message)
        assert _as_the_old_decoder_saw_it(ours, cls) == _as_the_old_decoder_saw_it(theirs, cls), (
            name
        )
    old_notification = msgspec.msgpack.decode(golden["durable_notification"])
    new_notification = msgspec.msgpack.decode(
        protocol.pack_results([golden["result_value"], golden["result_error"]])[0]
    )
    assert new_notification == old_notification


def test_every_message_is_tagged_by_its_class() -> None:
    tags = [cls.TYPE for cls in protocol.MESSAGE_TYPES]
    assert len(set(tags)) == len(tags)
    assert protocol.Invocation.TYPE == "sp.invocation.v1"
    assert protocol.HttpPart.TYPE == "sp.http.part.v1"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1 not msgpack", r"malformed sp\.result\.v1 message: MessagePack data is malformed"),
        (b"", r"malformed sp\.result\.v1 message: Input data was truncated"),
        (msgspec.msgpack.encode([1, 2]), r"expected a sp\.result\.v1 message, got a list"),
        (msgspec.msgpack.encode({"id": "a", "node": "n"}), "got an untagged one"),
        (msgspec.msgpack.encode({"t": "sp.result.v0", "id": "a"}), "got 'sp.result.v0'"),
        (
            msgspec.msgpack.encode({"t": "sp.result.v1", "id": "a"}),
            r"missing required field `node`",
        ),
        (
            msgspec.msgpack.encode({"t": "sp.result.v1", "id": "a", "node": "n", "attempts": "2"}),
            r"Expected `int`, got `str` - at `\$\.attempts`",
        ),
        (
            msgspec.msgpack.encode({"t": "sp.result.v1", "id": "a", "node": "n", "error": {}}),
            r"missing required field `kind` - at `\$\.error`",
        ),
        (b"\x91" * 5000, "malformed"),
    ],
)
def test_a_malformed_message_raises_one_error_that_says_what_is_wrong(
    data: bytes, reason: str
) -> None:
    with pytest.raises(protocol.ProtocolError, match=reason):
        protocol.Result.decode(data)


def test_unknown_keys_are_ignored_and_left_out_defaults_filled_in() -> None:
    """A later version may add a field with a default without a new tag."""
    data = msgspec.msgpack.encode({"t": "sp.result.v1", "id": "a", "node": "n", "new": [1]})
    assert protocol.Result.decode(data) == protocol.Result("a", "n")


def test_messages_keep_their_python_api() -> None:
    """Positional construction in field order, mutability, defaults not shared."""
    error = protocol.ErrorInfo("raised", "E", "m")
    error.types.append("E")
    assert protocol.ErrorInfo("raised", "E", "m").types == []
    inv = wire_samples.messages()["invocation"]
    inv.ctx.log_to = "_SP.x.r.log"
    assert protocol.Invocation.decode(inv.encode()).ctx.log_to == "_SP.x.r.log"
    assert inv.remaining_s() < 0
    span = wire_samples.messages()["span_root"]
    assert json.loads(json.dumps(msgspec.structs.asdict(span)))["parent_id"] is None


SUBJECT_PREFIXES = ("sp.", "_SP.", "_SPN.", "$JS.", "$KV.", "$O.", "KV_", "OBJ_")
"""How the lattice's subjects and stream names begin (JetStream's own included)."""


def _literal_heads(source: str) -> Iterator[tuple[int, str]]:
    """The text each string literal of a module starts with (an f-string's, up to its
    first placeholder), by line.

    Read with ``tokenize``, not ``ast``: CPython 3.11 keeps the AST constructor's depth
    count interpreter-wide, and a traceback printed meanwhile in another thread of the
    test session (which parses the failing line) made ``ast.parse`` raise SystemError.
    """
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    fstring_start = getattr(tokenize, "FSTRING_START", None)  # Python 3.12 and later
    for token, after in zip(tokens, [*tokens[1:], None], strict=True):
        if token.type == tokenize.STRING:
            prefix = token.string[: len(token.string) - len(token.string.lstrip("rRbBuUfF"))]
            body = token.string[len(prefix) :]
            quote = body[:3] if body[:3] in ('"""', "'''") else body[:1]
            text = body[len(quote) : -len(quote)]
            yield token.start[0], text.split("{", 1)[0] if "f" in prefix.lower() else text
        elif token.type == fstring_start and after is not None:
            yield token.start[0], after.string if after.type != tokenize.OP else ""


def test_only_protocol_formats_subjects() -> None:
    """protocol.py is the whole wire contract: no other module spells a subject, stream
    or JetStream API name. (A subject has no whitespace, which tells it from prose such
    as an error message naming ``sp.use``.)"""
    package = Path(protocol.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == Path(protocol.__file__):
            continue
        for line, head in _literal_heads(path.read_text()):
            if head.startswith(SUBJECT_PREFIXES) and not any(c.isspace() for c in head):
                found.append(f"{path.relative_to(package)}:{line}: {head!r}")
    assert not found, "subjects spelled outside protocol.py:\n" + "\n".join(found)


def test_frames_round_trip_in_their_direction() -> None:
    to_executor = get_args(protocol.FromAgent)
    for frame in wire_samples.frames():
        data = protocol.encode_frame(frame)
        if isinstance(frame, to_executor):
            assert protocol.decode_from_agent(data) == frame
        else:
            assert protocol.decode_from_executor(data) == frame
    done = protocol.Done("a", ok=True)
    assert msgspec.msgpack.decode(protocol.encode_frame(done)) == {
        "op": "done",
        "id": "a",
        "ok": True,
    }


def test_a_request_and_its_answer_share_an_op_in_opposite_directions() -> None:
    quiet = protocol.encode_frame(protocol.Quiet())
    assert protocol.decode_from_agent(quiet) == protocol.Quiet()
    assert protocol.decode_from_executor(quiet) == protocol.Quieted()
    stack = protocol.encode_frame(protocol.Stack("a", "tb"))
    assert protocol.decode_from_executor(stack) == protocol.Stack("a", "tb")
    with pytest.raises(protocol.ProtocolError, match="malformed frame from an executor"):
        protocol.decode_from_executor(protocol.encode_frame(protocol.Run(b"", "r")))
    with pytest.raises(protocol.ProtocolError, match="malformed frame from the agent"):
        protocol.decode_from_agent(protocol.encode_frame(protocol.Ready(1)))


def test_text_messages_keep_their_bytes() -> None:
    assert protocol.OfferPull("b1", 0, 1048576).encode() == b"b1 0 1048576"
    assert protocol.OfferRelease("b1").encode() == b"b1 release"
    assert protocol.ForwardDone("n1", "c0ffee.1a").encode() == b"n1 c0ffee.1a"
    assert protocol.decode_offer_request(b"b1 0 1048576") == protocol.OfferPull("b1", 0, 1048576)
    assert protocol.decode_offer_request(b" b1\t0  10\n") == protocol.OfferPull("b1", 0, 10)
    assert protocol.decode_offer_request(b"b1 release") == protocol.OfferRelease("b1")
    assert protocol.ForwardDone.decode(b"n1 c0ffee.1a") == protocol.ForwardDone("n1", "c0ffee.1a")


@pytest.mark.parametrize(
    "data", [b"", b"b1", b"b1 1", b"b1 -1 10", b"b1 1.0 10", b"b1 \xc2\xb2 1", b"b1 1 2 3"]
)
def test_a_malformed_offer_request_is_refused(data: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="not a pull or release"):
        protocol.decode_offer_request(data)


def test_a_malformed_forward_done_notice_is_refused() -> None:
    with pytest.raises(protocol.ProtocolError, match="not a forward-done notice"):
        protocol.ForwardDone.decode(b"n1")
    with pytest.raises(protocol.ProtocolError, match="not text"):
        protocol.ForwardDone.decode(b"\xff \xfe")
