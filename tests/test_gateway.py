"""The HTTP gateway, over real HTTP, in front of a real lattice."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, Lattice, lattice_env, superpose_cli
from http_errors import error_of
from superpose.config import MAX_HTTP_BODY_BYTES
from superpose.local.lattice import free_port

DIGEST = re.compile(r"^[0-9a-f]{64}$", re.MULTILINE)

APP_SOURCE = """
import time

import superpose as sp


@sp.function
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@sp.function
def boom(message: str) -> None:
    raise ValueError(message)


@sp.function(timeout=1)
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"


@sp.function
def tag() -> str:
    return "{tag}"
"""


def deploy(lattice: Lattice, path: Path) -> str:
    proc = superpose_cli("deploy", str(path), url=lattice.url, check=True)
    return DIGEST.findall(proc.stdout)[-1]


@pytest.fixture(scope="module")
def app(lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A throwaway app for this module; returns its name."""
    name = f"gw_{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("gateway") / name
    folder.mkdir()
    (folder / "gw.py").write_text(APP_SOURCE.replace("{tag}", "only"))
    deploy(lattice, folder)
    deploy(lattice, ROOT / "examples" / "hello")
    return name


@pytest.fixture(scope="module")
def http(lattice: Lattice) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lattice.gateway, headers=lattice.auth, timeout=60) as c:
        yield c


def test_call_returns_the_result(http: httpx.Client, app: str) -> None:
    response = http.post("/v1/call/hello.greet", json={"args": ["web"]})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"result": "Hello, web!"}


def test_call_with_kwargs_and_with_no_body(http: httpx.Client, app: str) -> None:
    response = http.post(f"/v1/call/{app}.echo", json={"args": [1, [2]], "kwargs": {"k": "v"}})
    assert response.json() == {"result": {"args": [1, [2]], "kwargs": {"k": "v"}}}
    empty = http.post(f"/v1/call/{app}.echo")
    assert empty.status_code == 200
    assert empty.json() == {"result": {"args": [], "kwargs": {}}}


def test_function_that_raised_is_a_500_with_the_remote_error(http: httpx.Client, app: str) -> None:
    response = http.post(f"/v1/call/{app}.boom", json={"args": ["kaboom"]})
    assert response.status_code == 500
    error = error_of(response)
    assert error["type"] == "ValueError"
    assert error["message"] == "kaboom"
    assert "Traceback (most recent call last)" in error["traceback"]
    assert "gw.py" in error["traceback"]


def test_timeout_is_a_504(http: httpx.Client, app: str) -> None:
    response = http.post(f"/v1/call/{app}.nap", json={"args": [5]})
    assert response.status_code == 504
    assert "timeout" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/v1/call/hello.no_such_fn", "no_such_fn"),
        ("/v1/call/no_such_app.greet", "no_such_app"),
        ("/v1/call/hello.greet@abcdef123456", "abcdef123456"),
    ],
)
def test_unknown_function_is_a_404(http: httpx.Client, app: str, path: str, named: str) -> None:
    response = http.post(path, json={"args": ["x"]})
    assert response.status_code == 404
    assert named in error_of(response)["message"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b'["x"]', "must be a JSON object"),
        (b'{"args": "x"}', '"args" must be a JSON array'),
        (b'{"args": [], "kwargs": [1]}', '"kwargs" must be a JSON object'),
        (b'{"args": [], "extra": 1}', "unknown field(s) in request body: extra"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_malformed_body_is_a_400_naming_the_problem(
    http: httpx.Client, app: str, body: bytes, problem: str
) -> None:
    response = http.post(
        "/v1/call/hello.greet", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert problem in error_of(response)["message"]


def test_malformed_name_is_a_400(http: httpx.Client) -> None:
    response = http.post("/v1/call/nodot", json={})
    assert response.status_code == 400
    assert "APP.FN" in error_of(response)["message"]


def test_body_over_the_limit_is_a_413(http: httpx.Client, app: str) -> None:
    too_big = b'{"args": ["' + b"x" * MAX_HTTP_BODY_BYTES + b'"]}'
    response = http.post(f"/v1/call/{app}.echo", content=too_big)
    assert response.status_code == 413
    assert str(MAX_HTTP_BODY_BYTES) in error_of(response)["message"]


@pytest.fixture
def small_gateway(lattice: Lattice) -> Iterator[str]:
    """A second, real gateway process whose body limit is 1 KiB."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "superpose",
            "gateway",
            "--lattice",
            lattice.url,
            "--port",
            str(port),
            "--max-body-bytes",
            "1024",
            "--creds",
            lattice_env(lattice.url)["SUPERPOSE_CREDS"],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                httpx.get(f"{url}/v1/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def test_streamed_body_over_the_limit_is_a_413(
    lattice: Lattice, small_gateway: str, app: str
) -> None:
    """Without a Content-Length the gateway counts the bytes as they arrive."""

    def chunks() -> Iterator[bytes]:
        yield b'{"args": ["'
        for _ in range(8):
            yield b"y" * 512
        yield b'"]}'

    with httpx.Client(base_url=small_gateway, headers=lattice.auth, timeout=60) as local:
        small = local.post(f"/v1/call/{app}.echo", json={"args": ["ok"]})
        assert small.status_code == 200
        assert small.json()["result"]["args"] == ["ok"]
        response = local.post(f"/v1/call/{app}.echo", content=chunks())
        assert "content-length" not in response.request.headers
        assert response.status_code == 413
        assert "1024" in error_of(response)["message"]


def test_version_by_path_suffix_or_header(
    lattice: Lattice, http: httpx.Client, tmp_path: Path
) -> None:
    name = f"gwv_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "gw.py").write_text(APP_SOURCE.replace("{tag}", "one"))
    one = deploy(lattice, folder)
    (folder / "gw.py").write_text(APP_SOURCE.replace("{tag}", "two"))
    two = deploy(lattice, folder)
    assert http.post(f"/v1/call/{name}.tag").json() == {"result": "two"}
    assert http.post(f"/v1/call/{name}.tag@{one[:10]}").json() == {"result": "one"}
    by_header = http.post(f"/v1/call/{name}.tag", headers={"X-Superpose-Version": one[:10]})
    assert by_header.json() == {"result": "one"}
    assert http.post(f"/v1/call/{name}.tag@{two[:10]}").json() == {"result": "two"}


def test_status_lists_nodes_and_apps(http: httpx.Client, app: str, lattice: Lattice) -> None:
    response = http.get("/v1/status")
    assert response.status_code == 200
    state = response.json()
    assert state["lattice"] == lattice.url
    assert len(state["nodes"]) >= 2
    assert {"id", "host", "labels", "slots", "busy", "warm"} <= set(state["nodes"][0])
    assert {app, "hello"} <= {a["app"] for a in state["apps"]}


def test_health(http: httpx.Client) -> None:
    assert http.get("/v1/health").json() == {"ok": True}


def test_openapi_document(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    call = doc["paths"]["/v1/call/{name}"]["post"]
    assert {p["name"] for p in call["parameters"]} >= {"name"}
    assert {"200", "400", "404", "413", "500", "504"} <= set(call["responses"])
    assert "/v1/status" in doc["paths"]
    json.dumps(doc)  # plain JSON all the way down
