"""HTTP apps: ASGI apps deployed with --asgi, served through the gateway by real nodes."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import superpose as sp
from conftest import ROOT, Lattice, poll, start_lattice, stop_lattice, superpose_cli
from superpose.client.deploy import deploy as deploy_app
from superpose.code import asgi_entry
from superpose.config import MAX_HTTP_BODY_BYTES
from superpose.errors import BadRequestError, DeployError
from test_cli import deploy, unique, write_app

PROBE = """
import contextlib
import hashlib

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

STARTS = []


@contextlib.asynccontextmanager
async def lifespan(app):
    STARTS.append(1)
    yield {"starts": len(STARTS)}


async def echo(request):
    body = await request.body()
    response = JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "root_path": request.scope["root_path"],
            "query": request.url.query,
            "params": dict(request.query_params),
            "x_headers": {k: v for k, v in request.headers.items() if k.startswith("x-t")},
            "size": len(body),
            "sha": hashlib.sha256(body).hexdigest(),
            "starts": request.state.starts,
            "url_for": str(request.url_for("echo")),
        },
        status_code=int(request.query_params.get("status", 200)),
        headers={"x-probe": "yes"},
    )
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


async def sized(request):
    return Response(b"z" * int(request.query_params["n"]), media_type="application/octet-stream")


async def stream(request):
    n, size = int(request.query_params["n"]), int(request.query_params["size"])

    async def chunks():
        for i in range(n):
            yield bytes([65 + i]) * size
        if request.query_params.get("boom"):
            raise RuntimeError("stream-boom")

    return StreamingResponse(chunks(), media_type="text/plain", headers={"x-streamed": "yes"})


async def boom(request):
    raise ValueError("starlette-boom")


inner = Starlette(
    routes=[
        Route("/echo", echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        Route("/sized", sized),
        Route("/stream", stream),
        Route("/boom", boom),
    ],
    lifespan=lifespan,
)


async def app(scope, receive, send):
    \"\"\"Starlette, plus routes that misbehave below it, where nothing catches them.\"\"\"
    path = scope.get("path", "")
    if path.endswith("/raw-boom"):
        raise RuntimeError("raw-boom")
    if path.endswith("/silent"):
        return
    if path.endswith("/twice"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.start", "status": 200, "headers": []})
    if path.endswith("/early"):
        await send({"type": "http.response.body", "body": b"before the start"})
    if path.endswith("/open"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"and then", "more_body": True})
        return
    await inner(scope, receive, send)
"""

TAGGED = """
TAG = "{tag}"


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan here")
    headers = [(b"content-type", b"text/plain")]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": TAG.encode()}})
"""

STARTS_SECOND_TIME = """
import contextlib

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

ATTEMPTS = []


@contextlib.asynccontextmanager
async def lifespan(app):
    ATTEMPTS.append(1)
    if len(ATTEMPTS) == 1:
        raise RuntimeError("no database yet")
    yield


async def hello(request):
    return PlainTextResponse("up")


app = Starlette(routes=[Route("/", hello)], lifespan=lifespan)
"""


@pytest.fixture(scope="module")
def http(lattice: Lattice) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lattice.gateway, headers=lattice.auth, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def site(lattice: Lattice) -> str:
    """examples/site deployed as a user would, with the CLI."""
    proc = superpose_cli(
        "deploy", str(ROOT / "examples" / "site"), "--asgi", "main:app", url=lattice.url, check=True
    )
    assert "http: main:app at /site/" in proc.stdout
    assert "site.shout" in proc.stdout
    return "site"


@pytest.fixture(scope="module")
def probe(lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = unique("probe")
    folder = write_app(tmp_path_factory.mktemp("asgi") / name, {"probe.py": PROBE})
    deploy(lattice, folder, "--asgi", "probe:app")
    return name


def error_of(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, str] = body["error"]
    return error


# --- the example site -----------------------------------------------------------------


def test_site_page_has_a_form_that_posts_under_the_app_prefix(
    http: httpx.Client, site: str
) -> None:
    page = http.get("/site/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="http://' in page.text
    assert '/site/greet"' in page.text
    assert int(page.headers["content-length"]) == len(page.content)


def test_site_form_post(http: httpx.Client, site: str) -> None:
    response = http.post("/site/greet", data={"name": "Ada <3"})
    assert response.status_code == 200
    assert response.text == "<p>Hello, Ada &lt;3!</p>"
    missing = http.post("/site/greet", data={})
    assert missing.status_code == 422  # FastAPI's own validation answer


def test_site_query_param_and_a_nested_call(http: httpx.Client, site: str) -> None:
    response = http.get("/site/shout", params={"text": "hey you"})
    assert response.json() == {"text": "hey you", "shouted": "HEY YOU!"}


def test_site_functions_stay_callable(http: httpx.Client, site: str) -> None:
    response = http.post("/v1/call/site.shout", json={"args": ["fn"]})
    assert response.json() == {"result": "FN!"}
    (app,) = [a for a in http.get("/v1/status").json()["apps"] if a["app"] == site]
    assert app["versions"][0]["kind"] == "asgi"
    assert app["versions"][0]["functions"] == ["http", "shout"]


def test_site_streams_a_body(http: httpx.Client, site: str) -> None:
    with http.stream("GET", "/site/count", params={"to": 4}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "content-length" not in response.headers
        assert response.headers["transfer-encoding"] == "chunked"
        assert list(response.iter_lines()) == ["1", "2", "3", "4"]


def test_site_without_trailing_slash_redirects_into_the_prefix(
    http: httpx.Client, site: str
) -> None:
    response = http.get("/site", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"].endswith("/site/")
    assert http.get("/site", follow_redirects=True).status_code == 200


# --- requests and responses in detail ---------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_method_path_query_headers_and_body_reach_the_app(
    http: httpx.Client, probe: str, method: str
) -> None:
    body = b"\x00\xffbinary body" if method != "GET" else b""
    response = http.request(
        method,
        f"/{probe}/echo",
        params=[("q", "1"), ("q", "2"), ("s", "a b")],
        headers={"x-trace": "abc", "x-tag": "t1"},
        content=body,
    )
    assert response.status_code == 200
    got = response.json()
    assert got["method"] == method
    assert got["path"] == f"/{probe}/echo"
    assert got["root_path"] == f"/{probe}"
    assert got["url_for"].endswith(f"/{probe}/echo")
    assert got["query"] == "q=1&q=2&s=a+b"
    assert got["x_headers"] == {"x-trace": "abc", "x-tag": "t1"}
    assert got["size"] == len(body)
    assert got["sha"] == hashlib.sha256(body).hexdigest()


def test_status_and_response_headers_come_back(http: httpx.Client, probe: str) -> None:
    response = http.get(f"/{probe}/echo", params={"status": 418})
    assert response.status_code == 418
    assert response.headers["x-probe"] == "yes"
    assert sorted(response.headers.get_list("set-cookie")) == [
        "a=1; Path=/; SameSite=lax",
        "b=2; Path=/; SameSite=lax",
    ]


def test_lifespan_started_once_per_executor(http: httpx.Client, probe: str) -> None:
    starts = {http.get(f"/{probe}/echo").json()["starts"] for _ in range(6)}
    assert starts == {1}


def test_head_request(http: httpx.Client, probe: str) -> None:
    response = http.head(f"/{probe}/sized", params={"n": 10})
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "10"


def test_large_request_and_response_bodies(http: httpx.Client, probe: str) -> None:
    """Over 256 KiB both ways: they travel through the object store, like big arguments."""
    body = bytes(range(256)) * 4096  # 1 MiB
    got = http.post(f"/{probe}/echo", content=body).json()
    assert got["size"] == len(body)
    assert got["sha"] == hashlib.sha256(body).hexdigest()
    response = http.get(f"/{probe}/sized", params={"n": 3_000_000})
    assert response.status_code == 200
    assert response.content == b"z" * 3_000_000


def test_streamed_body_with_chunks_larger_than_a_part(http: httpx.Client, probe: str) -> None:
    size = 600_000  # split into parts of 256 KiB on the way
    with http.stream("GET", f"/{probe}/stream", params={"n": 3, "size": size}) as response:
        assert response.headers["x-streamed"] == "yes"
        assert response.read() == b"A" * size + b"B" * size + b"C" * size


def test_body_over_the_gateway_limit_is_a_413(http: httpx.Client, probe: str) -> None:
    response = http.post(f"/{probe}/echo", content=b"x" * (MAX_HTTP_BODY_BYTES + 1))
    assert response.status_code == 413
    assert str(MAX_HTTP_BODY_BYTES) in error_of(response)["message"]


# --- apps that fail -----------------------------------------------------------------------


def test_an_app_that_raises_is_a_500_and_the_node_keeps_serving(
    lattice: Lattice, http: httpx.Client, probe: str
) -> None:
    response = http.get(f"/{probe}/raw-boom")
    assert response.status_code == 500
    error = error_of(response)
    assert error["type"] == "RuntimeError"
    assert "raw-boom" in error["message"]
    assert "traceback" not in error  # web clients do not get the app's internals
    assert http.get(f"/{probe}/echo").status_code == 200

    def logged(where: str) -> bool:
        return any("raw-boom" in p.read_text() for p in lattice.state_dir.rglob(where))

    poll(lambda: logged("executors.log"), "the traceback in an executors.log")
    logs = poll(
        lambda: (
            (out := superpose_cli("logs", probe, url=lattice.url).stdout)
            and 'raise RuntimeError("raw-boom")' in out
            and out
        ),
        "the traceback in `superpose logs`",
    )
    assert "Traceback (most recent call last)" in logs


def test_a_starlette_app_that_raises_answers_its_own_500(
    lattice: Lattice, http: httpx.Client, probe: str
) -> None:
    response = http.get(f"/{probe}/boom")
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    assert http.get(f"/{probe}/echo").status_code == 200
    poll(
        lambda: "starlette-boom" in superpose_cli("logs", probe, url=lattice.url).stdout,
        "the traceback in `superpose logs`",
    )


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("silent", "never started a response"),
        ("twice", "twice"),
        ("early", "outside a response"),
    ],
)
def test_an_app_that_breaks_the_protocol_is_a_500(
    http: httpx.Client, probe: str, path: str, problem: str
) -> None:
    response = http.get(f"/{probe}/{path}")
    assert response.status_code == 500
    assert problem in error_of(response)["message"]
    assert http.get(f"/{probe}/echo").status_code == 200


@pytest.mark.parametrize(
    "path", ["stream?n=2&size=10&boom=1", "open"], ids=["raises", "returns-mid-body"]
)
def test_a_stream_that_fails_midway_is_cut_short(http: httpx.Client, probe: str, path: str) -> None:
    """Its status has been sent: the only honest signal left is an incomplete body."""
    with (
        http.stream("GET", f"/{probe}/{path}") as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        assert response.status_code == 200
        response.read()
    assert http.get(f"/{probe}/echo").status_code == 200


def test_an_app_whose_lifespan_fails_is_a_500_until_it_starts(
    lattice: Lattice, http: httpx.Client, tmp_path: Path
) -> None:
    name = unique("nostart")
    folder = write_app(tmp_path / name, {"main.py": STARTS_SECOND_TIME})
    deploy(lattice, folder, "--asgi", "main:app")
    response = http.get(f"/{name}/")
    assert response.status_code == 500
    message = error_of(response)["message"]
    assert "main:app failed to start: RuntimeError: no database yet" in message
    assert "Traceback" not in message
    # Each executor fails its first start only, and a failed start is tried again:
    # six requests over fewer than six nodes reach one node twice, and are served there.
    answers = [http.get(f"/{name}/") for _ in range(5)]
    assert "up" in [a.text for a in answers if a.status_code == 200]


# --- names, versions and where requests go ---------------------------------------------------


@pytest.mark.parametrize("app", ["no_such_site", "not.a.name"])
def test_unknown_app_is_a_404_naming_it(http: httpx.Client, app: str) -> None:
    response = http.get(f"/{app}/anything")
    assert response.status_code == 404
    assert app in error_of(response)["message"]


def test_an_app_without_an_http_entry_is_a_404_with_a_hint(
    lattice: Lattice, http: httpx.Client
) -> None:
    deploy(lattice, ROOT / "examples" / "hello")
    response = http.post("/hello/greet", json={"args": ["x"]})
    assert response.status_code == 404
    message = error_of(response)["message"]
    assert "has no HTTP app" in message and "--asgi" in message


def test_gateway_routes_win_and_v1_is_not_an_app(http: httpx.Client, site: str) -> None:
    assert http.get("/v1/health").json() == {"ok": True}
    response = http.get("/v1/no-such-endpoint")
    assert response.status_code == 404
    assert "/openapi.json" in error_of(response)["message"]


def deploy_one_then_two(lattice: Lattice, tmp_path: Path, prefix: str) -> tuple[str, str]:
    """A new HTTP app answering "one", then its second version answering "two" (latest):
    the app's name and the first version's digest."""
    name = unique(prefix)
    folder = tmp_path / name
    write_app(folder, {"main.py": TAGGED.format(tag="one")})
    one = deploy(lattice, folder, "--asgi", "main:app")
    write_app(folder, {"main.py": TAGGED.format(tag="two")})
    deploy(lattice, folder, "--asgi", "main:app")
    return name, one


def test_the_version_header_picks_an_older_version(
    lattice: Lattice, http: httpx.Client, tmp_path: Path
) -> None:
    name, one = deploy_one_then_two(lattice, tmp_path, "tagged")
    assert http.get(f"/{name}/").text == "two"
    assert http.get(f"/{name}/", headers={"X-Superpose-Version": one[:10]}).text == "one"
    unknown = http.get(f"/{name}/", headers={"X-Superpose-Version": "abcdef123456"})
    assert unknown.status_code == 404
    assert "abcdef123456" in error_of(unknown)["message"]


def test_canary_sessions_and_pins_apply_to_http_apps(
    lattice: Lattice, http: httpx.Client, tmp_path: Path
) -> None:
    name, one = deploy_one_then_two(lattice, tmp_path, "canaried")
    superpose_cli(
        "canary", name, one[:12], "--percent", "50", "--key", "header:X-Session",
        url=lattice.url, check=True,
    )  # fmt: skip
    seen = {f"s{i}": http.get(f"/{name}/", headers={"X-Session": f"s{i}"}).text for i in range(40)}
    assert set(seen.values()) == {"one", "two"}
    for session, tag in list(seen.items())[:10]:
        assert http.get(f"/{name}/", headers={"X-Session": session}).text == tag
    nodes = json.loads(superpose_cli("status", "--json", url=lattice.url, check=True).stdout)
    node = nodes["nodes"][0]["id"]
    superpose_cli("pin", f"{name}.http", node, url=lattice.url, check=True)
    try:
        poll(
            lambda: http.get(f"/{name}/", headers={"X-Session": "s0"}).status_code == 200,
            "the pinned app to answer",
        )
        before = poll(lambda: settled_counts(lattice), "the nodes' counts to settle")
        for _ in range(20):
            assert http.get(f"/{name}/", headers={"X-Session": "s0"}).text == seen["s0"]

        def served() -> dict[str, int] | None:
            state = json.loads(superpose_cli("status", "--json", url=lattice.url).stdout)
            now = {n["id"]: n["served"] - before.get(n["id"], 0) for n in state["nodes"]}
            return now if now.get(node, 0) >= 20 else None

        grown = poll(served, "the pinned node's heartbeat")
        assert all(count == 0 for other, count in grown.items() if other != node), grown
    finally:
        superpose_cli("unpin", f"{name}.http", url=lattice.url, check=True)


def settled_counts(lattice: Lattice) -> dict[str, int] | None:
    """Calls served per node, once two heartbeats in a row agree (earlier calls counted)."""

    def counts() -> dict[str, int]:
        state = json.loads(superpose_cli("status", "--json", url=lattice.url, check=True).stdout)
        return {n["id"]: n["served"] for n in state["nodes"]}

    first = counts()
    time.sleep(2.2)  # one node heartbeat
    return first if counts() == first else None


def test_one_node_serves_the_site_and_the_shop_in_turn(tmp_path: Path) -> None:
    handle = start_lattice(tmp_path / "one-node", workers=1)
    try:
        site = deploy(handle, ROOT / "examples" / "site", "--asgi", "main:app")
        shop = deploy(handle, ROOT / "examples" / "shop")
        with httpx.Client(base_url=handle.gateway, headers=handle.auth, timeout=60) as http:
            for _ in range(2):
                page = http.post("/site/greet", data={"name": "shopper"})
                assert page.text == "<p>Hello, shopper!</p>"
                quote = http.post("/v1/call/shop.quote", json={"args": ["apple", 12]})
                assert quote.json() == {"result": 6.48}

            def warm() -> set[str]:
                (node,) = http.get("/v1/status").json()["nodes"]
                return set(node["warm"])

            poll(lambda: {site, shop} <= warm(), "both bundles warm on the one node")
    finally:
        stop_lattice(handle)


# --- deploy ----------------------------------------------------------------------------------


def test_deploy_refuses_an_app_that_fails_to_import(lattice: Lattice, tmp_path: Path) -> None:
    name = unique("noimport")
    folder = write_app(
        tmp_path / name,
        {
            "main.py": "import helper\n\napp = helper.make()\n",
            "helper.py": "import os\n\n\ndef make():\n    return os.environ['NO_SUCH_VARIABLE']\n",
        },
    )
    proc = superpose_cli("deploy", str(folder), "--asgi", "main:app", url=lattice.url)
    assert proc.returncode == 1
    assert "helper.py:5: importing main:app failed: KeyError" in proc.stderr
    assert 'File "main.py", line 3' in proc.stderr
    assert "importlib" not in proc.stderr  # the traceback starts in the app
    status = json.loads(superpose_cli("ls", "--json", url=lattice.url, check=True).stdout)
    assert name not in {app["app"] for app in status}


@pytest.mark.parametrize(
    ("files", "entry", "error", "problem"),
    [
        ({"main.py": "app = 3\n"}, "main:app", DeployError, "main.py:1: --asgi main:app: "),
        ({"main.py": "app = 3\n"}, "main:api", DeployError, "main has no attribute 'api'"),
        ({"main.py": "def app(environ, start):\n    pass\n"}, "main:app", DeployError, "WSGI"),
        ({"main.py": "app = 3\n"}, "web:app", DeployError, "has no web.py"),
        ({"main.py": "app = 3\n"}, "main", BadRequestError, "is not MODULE:ATTR"),
        (
            {"main.py": "import os\n\nos._exit(3)\n"},
            "main:app",
            DeployError,
            "ended the checking process (exit status 3)",
        ),
        (
            {"main.py": "import superpose as sp\n\n\n@sp.function\ndef http():\n    pass\n"},
            "main:http",
            DeployError,
            "main.py:5: a function named 'http' collides",
        ),
    ],
)
def test_deploy_refuses_an_entry_that_is_not_an_app(
    client: sp.Client,
    tmp_path: Path,
    files: dict[str, str],
    entry: str,
    error: type[Exception],
    problem: str,
) -> None:
    name = unique("notapp")
    folder = write_app(tmp_path / name, files)
    with pytest.raises(error, match=re.escape(problem)):
        client.run(deploy_app(client, folder, asgi=entry))
    assert name not in client.run(client.registry()).versions


def test_deploy_gives_up_on_an_import_that_does_not_end(
    client: sp.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asgi_entry, "IMPORT_CHECK_TIMEOUT_S", 0.5)
    name = unique("slow")
    folder = write_app(tmp_path / name, {"main.py": "import time\n\ntime.sleep(60)\napp = 1\n"})
    with pytest.raises(DeployError, match=r"took more than 0\.5 s"):
        client.run(deploy_app(client, folder, asgi="main:app"))
    assert name not in client.run(client.registry()).versions


def test_deploy_refuses_an_http_app_named_v1(client: sp.Client, tmp_path: Path) -> None:
    folder = write_app(tmp_path / "v1", {"main.py": TAGGED.format(tag="x")})
    with pytest.raises(BadRequestError, match="/v1/"):
        client.run(deploy_app(client, folder, asgi="main:app"))
