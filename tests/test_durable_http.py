"""Durable invocations over HTTP: POST /v1/invoke, GET and DELETE /v1/invocations/{id}."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js.kv import KeyValue

import fns
import superpose as sp
from conftest import Lattice, poll, raw_nats, superpose_cli
from http_errors import error_of
from superpose import protocol
from superpose.client import durable
from superpose.client.durable import Submitter
from superpose.config import MAX_HTTP_BODY_BYTES
from superpose.lattice import results

DIGEST = re.compile(r"^[0-9a-f]{64}$", re.MULTILINE)

APP_SOURCE = """
import time

import superpose as sp


@sp.function
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@sp.function
def boom(message):
    raise ValueError(message)


@sp.function
def nap(marker, seconds):
    open(marker, "w").close()
    time.sleep(seconds)
    return "rested"


@sp.function
def tag():
    return "{tag}"
"""


def deploy(lattice: Lattice, folder: Path, tag: str) -> str:
    (folder / "durable_http.py").write_text(textwrap.dedent(APP_SOURCE).replace("{tag}", tag))
    proc = superpose_cli("deploy", str(folder), url=lattice.url, check=True)
    return DIGEST.findall(proc.stdout)[-1]


@pytest.fixture(scope="module")
def app(lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A throwaway app deployed twice: (name, first version, second version = latest)."""
    name = f"dhttp_{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("durable_http") / name
    folder.mkdir()
    first = deploy(lattice, folder, "one")
    second = deploy(lattice, folder, "two")
    return name, first, second


@pytest.fixture(scope="module")
def name(app: tuple[str, str, str]) -> str:
    return app[0]


@pytest.fixture(scope="module")
def http(lattice: Lattice) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lattice.gateway, headers=lattice.auth, timeout=90) as c:
        yield c


def invoke(http: httpx.Client, path: str, **kwargs: Any) -> str:
    """POST /v1/invoke/...: 202 with the id, and where to read it."""
    response = http.post(f"/v1/invoke/{path}", **kwargs)
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"id"}
    invocation_id: str = body["id"]
    assert protocol.is_valid_invocation_id(invocation_id)
    assert response.headers["location"] == f"/v1/invocations/{invocation_id}"
    return invocation_id


def finished(http: httpx.Client, invocation_id: str) -> dict[str, Any]:
    """GET /v1/invocations/{id}?wait=...: the 200 answer once it has finished."""
    response = http.get(f"/v1/invocations/{invocation_id}", params={"wait": 60})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["id"] == invocation_id
    return body


# --- invoke and results ----------------------------------------------------------------


def test_invoke_answers_202_with_an_id_whose_result_can_be_read(
    http: httpx.Client, name: str
) -> None:
    invocation_id = invoke(http, f"{name}.echo", json={"args": [1, [2]], "kwargs": {"k": "v"}})
    expected = {
        "id": invocation_id,
        "status": "done",
        "result": {"args": [1, [2]], "kwargs": {"k": "v"}},
    }
    assert finished(http, invocation_id) == expected
    again = http.get(f"/v1/invocations/{invocation_id}")  # stored: no wait needed now
    assert again.status_code == 200
    assert again.headers["content-type"].startswith("application/json")
    assert again.json() == expected


def test_invoke_with_no_body_and_with_a_large_argument(http: httpx.Client, name: str) -> None:
    empty = invoke(http, f"{name}.echo")
    assert finished(http, empty)["result"] == {"args": [], "kwargs": {}}
    big = "x" * 300_000  # over the inline limit: argument and result go through blobs
    spilled = invoke(http, f"{name}.echo", json={"args": [big]})
    assert finished(http, spilled)["result"] == {"args": [big], "kwargs": {}}


def test_a_failure_reads_as_failed_with_the_remote_error(http: httpx.Client, name: str) -> None:
    invocation_id = invoke(http, f"{name}.boom", json={"args": ["kaboom"]})
    body = finished(http, invocation_id)
    assert body["status"] == "failed"
    assert set(body) == {"id", "status", "error"}
    error = body["error"]
    assert error["type"] == "ValueError"
    assert error["message"] == "kaboom"
    assert error["kind"] == "raised"
    assert "Traceback (most recent call last)" in error["traceback"]


def test_results_of_python_spawns_read_as_json(http: httpx.Client, client: sp.Client) -> None:
    square = fns.square.spawn(9)
    spilled = fns.make_bytes.spawn(300_000)
    for future in (square, spilled):
        future.result(timeout=60)
    assert finished(http, square.invocation_id)["result"] == 81
    assert finished(http, spilled.invocation_id)["result"] == repr(b"\x07" * 300_000)


def test_the_same_idempotency_key_gives_the_same_id_and_result(
    http: httpx.Client, name: str
) -> None:
    key = f"order-{uuid.uuid4().hex}"
    first = invoke(http, f"{name}.echo", json={"args": ["once"]}, headers={"Idempotency-Key": key})
    assert finished(http, first)["result"] == {"args": ["once"], "kwargs": {}}
    second = invoke(
        http, f"{name}.echo", json={"args": ["twice"]}, headers={"Idempotency-Key": key}
    )
    assert second == first
    assert finished(http, second)["result"] == {"args": ["once"], "kwargs": {}}  # no second run
    other = invoke(http, f"{name}.echo", headers={"Idempotency-Key": key + "-2"})
    assert other != first


@pytest.mark.parametrize("key", ["", "k" * 1025])
def test_a_bad_idempotency_key_is_a_400(http: httpx.Client, name: str, key: str) -> None:
    response = http.post(f"/v1/invoke/{name}.echo", headers={"Idempotency-Key": key})
    assert response.status_code == 400
    assert "Idempotency-Key" in error_of(response)["message"]


def test_the_version_header_and_path_pick_the_version(
    http: httpx.Client, app: tuple[str, str, str]
) -> None:
    name, first, second = app
    latest = invoke(http, f"{name}.tag")
    by_path = invoke(http, f"{name}.tag@{first[:8]}")
    by_header = invoke(http, f"{name}.tag", headers={"X-Superpose-Version": first[:8]})
    overrides = invoke(http, f"{name}.tag@{second[:8]}", headers={"X-Superpose-Version": first[:8]})
    assert finished(http, latest)["result"] == "two"
    assert finished(http, by_path)["result"] == "one"
    assert finished(http, by_header)["result"] == "one"
    assert finished(http, overrides)["result"] == "one"
    unknown = http.post(f"/v1/invoke/{name}.tag", headers={"X-Superpose-Version": "abcdef123456"})
    assert unknown.status_code == 404
    assert "abcdef123456" in error_of(unknown)["message"]


# --- invoke errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b'["x"]', "must be a JSON object"),
        (b'{"args": "x"}', '"args" must be a JSON array'),
        (b'{"args": [], "kwargs": [1]}', '"kwargs" must be a JSON object'),
        (b'{"args": [], "extra": 1}', "unknown field(s) in request body: extra"),
    ],
)
def test_a_malformed_body_is_a_400(
    http: httpx.Client, name: str, body: bytes, problem: str
) -> None:
    response = http.post(
        f"/v1/invoke/{name}.echo", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert problem in error_of(response)["message"]


@pytest.mark.parametrize(
    ("path", "status", "named"),
    [
        ("nodot", 400, "APP.FN"),
        ("{name}.no_such_fn", 404, "no_such_fn"),
        ("no_such_app_zz.echo", 404, "no_such_app_zz"),
    ],
)
def test_a_bad_or_unknown_name_is_refused(
    http: httpx.Client, name: str, path: str, status: int, named: str
) -> None:
    response = http.post(f"/v1/invoke/{path.replace('{name}', name)}", json={})
    assert response.status_code == status
    assert named in error_of(response)["message"]


def test_a_body_over_the_limit_is_a_413(http: httpx.Client, name: str) -> None:
    too_big = b'{"args": ["' + b"x" * MAX_HTTP_BODY_BYTES + b'"]}'
    response = http.post(f"/v1/invoke/{name}.echo", content=too_big)
    assert response.status_code == 413
    assert str(MAX_HTTP_BODY_BYTES) in error_of(response)["message"]


# --- pending, cancel, bad ids ------------------------------------------------------------


def test_a_running_invocation_is_pending_until_cancelled(
    http: httpx.Client, name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    invocation_id = invoke(http, f"{name}.nap", json={"args": [str(marker), 60]})
    poll(marker.exists, "the invocation to start")
    path = f"/v1/invocations/{invocation_id}"

    for params in ({}, {"wait": "0.2"}):
        pending = http.get(path, params=params)
        assert pending.status_code == 202
        assert pending.json() == {"id": invocation_id, "status": "pending"}

    cancelled = http.delete(path)
    assert cancelled.status_code == 200
    assert cancelled.json() == {"id": invocation_id, "status": "cancelled"}
    assert finished(http, invocation_id) == {"id": invocation_id, "status": "cancelled"}

    again = http.delete(path)
    assert again.status_code == 409
    assert "already finished (cancelled)" in error_of(again)["message"]


def test_cancelling_a_finished_invocation_is_a_409(http: httpx.Client, name: str) -> None:
    invocation_id = invoke(http, f"{name}.echo", json={"args": [3]})
    assert finished(http, invocation_id)["status"] == "done"
    response = http.delete(f"/v1/invocations/{invocation_id}")
    assert response.status_code == 409
    error = error_of(response)
    assert error["type"] == "AlreadyFinished"
    assert f"{invocation_id} had already finished (done)" in error["message"]
    assert finished(http, invocation_id)["result"] == {"args": [3], "kwargs": {}}  # untouched


UNKNOWN_IDS = ["neverexisted42", "nobody.1", "nobody.0x1", "idem.0123456789abcdef"]
"""Ids never issued: no dot, an unknown client, not how ids are numbered, an unused key."""


@pytest.mark.parametrize("unknown", UNKNOWN_IDS)
def test_an_id_never_issued_is_a_404_and_a_cancel_of_it_stores_nothing(
    http: httpx.Client, unknown: str
) -> None:
    path = f"/v1/invocations/{unknown}"
    for method, params in (("GET", {}), ("GET", {"wait": "0.2"}), ("DELETE", {}), ("GET", {})):
        response = http.request(method, path, params=params)
        assert response.status_code == 404, (method, response.text)
        error = error_of(response)
        assert error["type"] == "NotFound"
        assert f"no invocation {unknown}: it was never issued" in error["message"]


def test_an_id_past_what_its_client_issued_is_a_404(http: httpx.Client, name: str) -> None:
    invocation_id = invoke(http, f"{name}.echo", json={"args": ["mine"]})
    client_part, _, seq = invocation_id.rpartition(".")
    later = f"{client_part}.{int(seq, 16) + 1000:x}"
    assert http.delete(f"/v1/invocations/{later}").status_code == 404
    assert http.get(f"/v1/invocations/{later}").status_code == 404
    assert finished(http, invocation_id)["status"] == "done"  # the real one is untouched


def test_an_idempotency_key_not_submitted_yet_is_unknown_then_runs(
    http: httpx.Client, name: str
) -> None:
    """Cancelling a key's id before the key is used stores nothing: the later
    submission runs as if the DELETE had never been sent."""
    key = f"later-{uuid.uuid4().hex}"
    key_id = protocol.idempotent_id(hashlib.sha256(key.encode()).hexdigest()[:40])
    assert http.delete(f"/v1/invocations/{key_id}").status_code == 404
    invocation_id = invoke(
        http, f"{name}.echo", json={"args": ["keyed"]}, headers={"Idempotency-Key": key}
    )
    assert invocation_id == key_id
    assert finished(http, invocation_id)["result"] == {"args": ["keyed"], "kwargs": {}}


def test_an_invocation_cancelled_as_soon_as_it_is_accepted_is_found(
    http: httpx.Client, name: str, tmp_path: Path
) -> None:
    """Its id is recorded as issued before the 202: a cancel right after never misses it."""
    invocation_id = invoke(http, f"{name}.nap", json={"args": [str(tmp_path / "m"), 60]})
    cancelled = http.delete(f"/v1/invocations/{invocation_id}")
    assert cancelled.status_code == 200, cancelled.text
    assert finished(http, invocation_id)["status"] == "cancelled"


def test_a_python_spawn_is_known_over_http(http: httpx.Client, client: sp.Client) -> None:
    future = fns.sleepy.spawn(60)
    poll(future.accepted.is_set, "the spawn to be persisted")
    path = f"/v1/invocations/{future.invocation_id}"
    assert http.get(path).status_code == 202
    assert http.delete(path).status_code == 200
    assert finished(http, future.invocation_id)["status"] == "cancelled"


def test_a_result_outliving_its_record_still_answers_409(
    http: httpx.Client, client: sp.Client
) -> None:
    """Records expire with their client's last submission, results with their end: an
    id with a stored result but no record had finished, it did not never exist."""
    orphan = f"gone{uuid.uuid4().hex[:8]}.1"
    failure = protocol.ErrorInfo(protocol.ERR_RAISED, "ValueError", "long ago")
    stored = protocol.Result(id=orphan, node="test", error=failure, finished=time.time())
    client.run(results.store_many(client.nc, [(orphan, stored.encode())]))
    response = http.delete(f"/v1/invocations/{orphan}")
    assert response.status_code == 409
    assert f"{orphan} had already finished (failed)" in error_of(response)["message"]


def test_an_unreadable_issued_record_counts_as_not_issued(
    http: httpx.Client, client: sp.Client
) -> None:
    client_part = f"garbled{uuid.uuid4().hex[:8]}"
    client.run(client.assets.issued.put(client_part, b"not hex"))
    assert http.delete(f"/v1/invocations/{client_part}.1").status_code == 404


async def test_ids_that_cannot_be_recorded_are_logged_not_failed(
    lattice: Lattice, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording runs beside the envelopes' publish: if it fails for good, they may
    have landed and will run, so the submission is not failed; the client warns."""
    nc = await raw_nats(lattice.url)
    try:
        missing = KeyValue(
            name="sp_missing",
            stream=protocol.kv_stream("sp_missing"),
            pre=protocol.kv_subject("sp_missing", ""),
            js=nc.jetstream(),
            direct=False,
        )
        submitter = Submitter(nc, "c0ffee", lambda *_: None, missing, missing)
        monkeypatch.setattr(durable, "ACCEPT_DEADLINE_S", 0.5)
        with caplog.at_level(logging.WARNING, "superpose.client"):
            await submitter._record_issued(["c0ffee.1", "c0ffee.2"])
        assert "could not record 2 invocation id(s) as issued" in caplog.text
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("invocation_id", "mark"),
    [
        ("0123abcd.1", ("0123abcd", 1)),
        ("0123abcd.ff", ("0123abcd", 255)),
        ("idem.abc", (protocol.keyed_hidden("idem.abc"), 0)),  # by a hash of its name
        ("sched.0a1b-1700000000000", ("sched.0a1b-1700000000000", 0)),  # a tick, by name
        ("0123abcd.01", None),  # durable_id writes no leading zero
        ("0123abcd.0x1", None),
        ("0123abcd.1_0", None),
        ("0123abcd.-1", None),
        ("0123abcd", None),
        ("idem", None),
        ("not..valid", None),
    ],
)
def test_the_issued_mark_of_an_id(invocation_id: str, mark: tuple[str, int] | None) -> None:
    assert protocol.issued_mark(invocation_id) == mark


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_malformed_id_is_a_400(http: httpx.Client, method: str) -> None:
    response = http.request(method, "/v1/invocations/not..an..id")
    assert response.status_code == 400
    assert "'not..an..id' is not a valid invocation id" in error_of(response)["message"]


@pytest.mark.parametrize(
    "wait", ["soon", "-1", "-0.001", "nan", "inf", "1e308", "60.5", "100000", "", "0x10", "1_0"]
)
def test_a_wait_outside_0_to_60_is_a_400(http: httpx.Client, wait: str) -> None:
    response = http.get("/v1/invocations/nobody.1", params={"wait": wait})
    assert response.status_code == 400
    message = error_of(response)["message"]
    assert f"wait={wait!r} is not allowed" in message
    assert "from 0 to 60" in message


@pytest.mark.parametrize("wait", ["0", "60", "0.5", "1e1", "-0"])
def test_a_wait_within_0_to_60_is_taken(http: httpx.Client, name: str, wait: str) -> None:
    invocation_id = invoke(http, f"{name}.echo", json={"args": [wait]})
    assert finished(http, invocation_id)["status"] == "done"
    response = http.get(f"/v1/invocations/{invocation_id}", params={"wait": wait})
    assert response.status_code == 200
    assert response.json()["result"] == {"args": [wait], "kwargs": {}}


def test_openapi_describes_the_durable_endpoints(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    invoke_op = paths["/v1/invoke/{name}"]["post"]
    assert "202" in invoke_op["responses"]
    headers = {p["name"] for p in invoke_op["parameters"] if p["in"] == "header"}
    assert headers == {"Idempotency-Key", "X-Superpose-Version"}
    invocation = paths["/v1/invocations/{id}"]
    assert {"200", "202", "400"} <= set(invocation["get"]["responses"])
    assert {"200", "400", "409"} <= set(invocation["delete"]["responses"])
    assert paths["/v1/call/{name}"]["post"]["parameters"][0]["name"] == "name"
    json.dumps(paths)  # plain JSON all the way down
