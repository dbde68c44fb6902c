"""One instance of every wire message, in the shapes the lattice sends them.

Shared by the compatibility test (``test_protocol.py``: these exact messages,
encoded by the dataclass codec that came before msgspec, are kept in
``wire_v1.json`` and must still decode to them) and the fuzz test (which mutates
their encodings).
"""

from __future__ import annotations

from typing import Any

from superpose import protocol

DIGEST = "d" * 64


def _payload_inline() -> protocol.Payload:
    return protocol.Payload(codec=protocol.CODEC_PICKLE, data=b"\x80\x05K*.", size=5)


def messages() -> dict[str, Any]:
    """Name → message: each type at least once, the optional parts both set and unset."""
    return {
        "invocation": protocol.Invocation(
            id="3f9a1c0e5b7d2468.1a",
            app="shop",
            fn="checkout",
            digest=DIGEST,
            module="shop.checkout",
            qualname="checkout",
            args=_payload_inline(),
            deadline=1_700_000_060.25,
        ),
        "invocation_full": protocol.Invocation(
            id="idem.0123456789abcdef",
            app="shop",
            fn="report",
            digest=DIGEST,
            module="shop.report",
            qualname="Report.run",
            args=protocol.Payload(
                codec=protocol.CODEC_JSON,
                blob="b" * 32,
                size=300_000,
                source="_SP.3f9a1c0e5b7d2468.b",
            ),
            deadline=1_700_086_400.5,
            timeout_s=30.0,
            memory_mb=512,
            ctx=protocol.CallContext(
                log_to="_SP.3f9a1c0e5b7d2468.r.log",
                trace_id="3f9a1c0e5b7d2468.2",
                parent_id="3f9a1c0e5b7d2468.1",
                depth=3,
                session="user-42",
                pins={"billing": "e" * 64},
                trace=True,
            ),
            attempt=2,
            retries=3,
            retry_on=["ValueError", "shop.errors.Flaky"],
            not_before=1_700_000_010.0,
            notify="_SP.3f9a1c0e5b7d2468.r.durable",
            needs={"gpu": "1", "node": "n1"},
        ),
        "invocation_int_numbers": protocol.Invocation(
            id="3f9a1c0e5b7d2468.1b",
            app="shop",
            fn="checkout",
            digest=DIGEST,
            module="shop.checkout",
            qualname="checkout",
            args=protocol.Payload(codec=protocol.CODEC_JSON, data=b'{"args": [1]}', size=13),
            deadline=1_700_000_060,  # an int where a float is declared
            timeout_s=5,
        ),
        "result_value": protocol.Result(
            id="3f9a1c0e5b7d2468.1a",
            node="node-7f3e",
            value=_payload_inline(),
            duration_s=0.00123,
        ),
        "result_error": protocol.Result(
            id="3f9a1c0e5b7d2468.1a",
            node="node-7f3e",
            error=protocol.ErrorInfo(
                kind=protocol.ERR_RAISED,
                type="ValueError",
                message="bad input",
                traceback="Traceback (most recent call last):\n  ...\nValueError: bad input\n",
                types=["ValueError", "Exception"],
            ),
            duration_s=0.5,
            attempts=3,
            finished=1_700_000_100.75,
        ),
        "result_bare": protocol.Result(id="3f9a1c0e5b7d2468.1c", node=""),
        "log_record": protocol.LogRecord(
            app="shop",
            fn="checkout",
            node="node-7f3e",
            invocation="3f9a1c0e5b7d2468.1a",
            stream="stdout",
            line="charged 42 € to card …1234",
            ts=1_700_000_001.5,
        ),
        "progress": protocol.Progress(node="node-7f3e", ids=["a.1", "a.2", "a.3"]),
        "node_info": protocol.NodeInfo(
            id="node-7f3e",
            host="box",
            pid=4242,
            labels={"node": "node-7f3e", "gpu": "1"},
            slots=4,
            busy=1,
            queued=2,
            warm=[DIGEST],
            started=1_700_000_000.0,
            seen=1_700_000_002.0,
            served=1234,
            cold_loads=3,
            express=1000,
            traffic={f"shop@{DIGEST}": 1234},
        ),
        "node_info_new": protocol.NodeInfo(id="n2", host="box", pid=1, labels={}, slots=1),
        "envelope": protocol.Envelope(id="3f9a1c0e5b7d2468.e1", items=[b"\x81\xa1t\xa1x", b""]),
        "dead_letter": protocol.DeadLetter(
            id="3f9a1c0e5b7d2468.1a",
            app="shop",
            fn="checkout",
            invocation=b"\x81\xa1t\xb0sp.invocation.v1",
            error=protocol.ErrorInfo(protocol.ERR_LOST, "Lost", "node died 10 times"),
            attempts=10,
            failed=1_700_000_200.0,
        ),
        "cancel": protocol.Cancel(ids=["3f9a1c0e5b7d2468.1a", "idem.x"]),
        "span": protocol.Span(
            trace_id="t.1",
            id="t.2",
            parent_id="t.1",
            app="shop",
            fn="checkout",
            digest=DIGEST,
            node="node-7f3e",
            started=1_700_000_000.125,
            duration_s=0.01,
            ok=True,
            session="user-42",
        ),
        "span_root": protocol.Span(
            trace_id="t.1",
            id="t.1",
            parent_id=None,
            app="site",
            fn="http",
            digest=DIGEST,
            node="node-7f3e",
            started=1_700_000_000.0,
            duration_s=0.02,
            ok=False,
        ),
        "http_request": protocol.HttpRequest(
            method="POST",
            path="/site/greet",
            raw_path=b"/site/greet",
            query=b"a=1&b=%C3%A9",
            root_path="/site",
            headers=[[b"content-type", b"text/plain"], [b"x-a", b"1"]],
            body=b"\x00\xffhello",
            client=["127.0.0.1", 50000],
            server=["localhost", 8000],
        ),
        "http_request_bare": protocol.HttpRequest(
            method="GET", path="/", raw_path=b"/", query=b"", root_path="", headers=[]
        ),
        "http_response": protocol.HttpResponse(
            200, [[b"content-type", b"text/html"], [b"set-cookie", b"a=1"]], b"<p>hi</p>"
        ),
        "http_response_streamed": protocol.HttpResponse(200, [], parts=3),
        "http_part": protocol.HttpPart(0, b"chunk", status=201, headers=[[b"x", b"y"]]),
        "http_part_next": protocol.HttpPart(1, b"more"),
    }


def notification() -> list[bytes]:
    """The encoded results of one durable notification (``pack_results``)."""
    found = messages()
    return [found["result_value"].encode(), found["result_error"].encode()]


def frames() -> list[Any]:
    """Every agent ↔ executor frame, the optional parts both set and unset."""
    inv = messages()["invocation"].encode()
    result = messages()["result_value"].encode()
    error = protocol.ErrorInfo(protocol.ERR_NOT_FOUND, "FunctionNotFound", "no such", "tb")
    return [
        protocol.Load(DIGEST, "/state/bundles/" + DIGEST, "shop"),
        protocol.Load(DIGEST, "/state/bundles/" + DIGEST, "shop", express=False),
        protocol.Load(
            DIGEST,
            "/state/bundles/" + DIGEST,
            "shop",
            key=DIGEST + "-0123456789abcdef",
            settings=protocol.ExecutorSettings(secrets=["STRIPE_KEY"], env={"MODE": "prod"}),
        ),
        protocol.Describe("describe:shop.checkout:checkout", "shop.checkout", "checkout"),
        protocol.Run(inv, "_SP.3f9a1c0e5b7d2468.r.3f9a1c0e5b7d2468.1a"),
        protocol.StackQuery("3f9a1c0e5b7d2468.1a"),
        protocol.Quiet(),
        protocol.Ready(4242),
        protocol.Loaded(),
        protocol.Loaded(
            error=protocol.ErrorInfo(protocol.ERR_PREPARE, "SecretNotSet", "secret X is not set")
        ),
        protocol.Described("describe:shop.checkout:checkout", meta={"is_async": False}),
        protocol.Described(
            "describe:shop.x:x", meta={"is_async": True, "timeout_s": 5.0, "concurrency": 8}
        ),
        protocol.Described("describe:shop.y:y", error=error),
        protocol.Start("3f9a1c0e5b7d2468.1a"),
        protocol.Done("3f9a1c0e5b7d2468.1a", ok=True),
        protocol.Done("3f9a1c0e5b7d2468.1a", ok=False, result=result),
        protocol.Block("3f9a1c0e5b7d2468.1a"),
        protocol.Unblock("3f9a1c0e5b7d2468.1a"),
        protocol.Took(inv, "_SP.3f9a1c0e5b7d2468.r.3f9a1c0e5b7d2468.1a"),
        protocol.Quieted(),
        protocol.Stack("3f9a1c0e5b7d2468.1a", '  File "shop.py", line 3, in checkout\n'),
        protocol.Stack("3f9a1c0e5b7d2468.1b", ""),
        protocol.Retire(
            protocol.ErrorInfo(protocol.ERR_PREPARE, "StartHookFailed", "start-up hook", "tb")
        ),
    ]
