"""The gateway against hostile clients: slow ones, too many, and JSON Python reads but
the standard does not. Real gateway processes in front of the session's lattice."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ROOT, Lattice, lattice_env, poll, superpose_cli
from http_errors import error_of
from superpose.errors import BadRequestError, SerializationError, UserError
from superpose.gateway.limits import Limits
from superpose.gateway.results import checked
from superpose.lattice import strict_json
from superpose.local.lattice import LocalLattice, free_port

SLOW_CONNECTIONS = 1000
NAN_APP = """
import superpose as sp


@sp.function
def nan() -> float:
    return float("nan")


@sp.function
def inf() -> list:
    return [1.0, float("-inf")]
"""


def strict_loads(text: bytes) -> Any:
    """What a browser's JSON.parse accepts: no NaN, no Infinity."""

    def refuse(name: str) -> None:
        raise AssertionError(f"the gateway emitted {name}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


@contextlib.contextmanager
def gateway(lattice: Lattice, *flags: str) -> Iterator[tuple[str, int]]:
    """A gateway process of its own with ``flags``: its URL and pid."""
    port = free_port()
    argv = [sys.executable, "-m", "superpose", "gateway", "--lattice", lattice.url]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **lattice_env(lattice.url)},
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            return httpx.get(f"{url}/v1/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        poll(answers, "the gateway to start", timeout=30)
        yield url, proc.pid
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def nan_app(lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = f"gwnan_{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("nan") / name
    folder.mkdir()
    (folder / "fns.py").write_text(NAN_APP)
    superpose_cli("deploy", str(folder), url=lattice.url, check=True)
    return name


@pytest.fixture(scope="module")
def hello(lattice: Lattice) -> str:
    superpose_cli("deploy", str(ROOT / "examples" / "hello"), url=lattice.url, check=True)
    return "hello.greet"


# JSON in ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b'{"args": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper than 64 levels"),
        (b'{"args": ' + b"[" * 70 + b"]" * 70 + b"}", "nested deeper than 64 levels"),
        (b'{"args": [' + b"7" * 5000 + b"]}", "integer with more than 4300 digits"),
        (b'{"args": [1e400]}', "JSON number 1e400 is too large for a float"),
        (b'{"args": [-' + b"9" * 400 + b".5]}", "too large for a float"),
        (b'{"args": [NaN]}', "NaN is not valid JSON"),
        (b'{"args": [Infinity]}', "Infinity is not valid JSON"),
        (b'{"kwargs": {"x": -Infinity}}', "-Infinity is not valid JSON"),
    ],
)
@pytest.mark.parametrize("endpoint", ["/v1/call/hello.greet", "/v1/invoke/hello.greet"])
def test_json_the_standard_refuses_is_a_400_naming_it(
    lattice: Lattice, endpoint: str, body: bytes, refused: str
) -> None:
    response = httpx.post(
        f"{lattice.gateway}{endpoint}", content=body, timeout=60, headers=lattice.auth
    )
    assert response.status_code == 400, response.text
    assert refused in error_of(response)["message"]


def test_strict_json_reads_what_the_standard_allows() -> None:
    deep = b"[" * 64 + b"]" * 64
    assert strict_json.loads(deep) is not None
    assert strict_json.loads(b'["[[[[{{{{", "NaN", 1e308, ' + b"9" * 4300 + b"]")[1] == "NaN"
    assert strict_json.loads(json.dumps([{"a": [1]}] * 10_000).encode())[0] == {"a": [1]}


def test_strict_json_refuses_malformed_and_non_utf8() -> None:
    with pytest.raises(BadRequestError, match="not valid JSON: Expecting"):
        strict_json.loads(b"[1,")
    with pytest.raises(BadRequestError, match="not UTF-8"):
        strict_json.loads(b'["\xff"]')


# JSON out --------------------------------------------------------------------------


@pytest.mark.parametrize(("fn", "value"), [("nan", "nan"), ("inf", "in it")])
def test_a_nan_result_is_a_500_naming_it_in_valid_json(
    lattice: Lattice, nan_app: str, fn: str, value: str
) -> None:
    response = httpx.post(
        f"{lattice.gateway}/v1/call/{nan_app}.{fn}", timeout=60, headers=lattice.auth
    )
    assert response.status_code == 500
    error = strict_loads(response.content)["error"]
    assert error["type"].endswith("SerializationError")
    assert f"the result of {nan_app}.{fn}" in error["message"]
    assert value in error["message"] and "JSON has no NaN or Infinity" in error["message"]


def test_a_durable_nan_result_fails_in_valid_json(lattice: Lattice, nan_app: str) -> None:
    submitted = httpx.post(
        f"{lattice.gateway}/v1/invoke/{nan_app}.nan", timeout=60, headers=lattice.auth
    )
    assert submitted.status_code == 202
    url = f"{lattice.gateway}/v1/invocations/{submitted.json()['id']}?wait=30"
    done = poll(
        lambda: (r := httpx.get(url, timeout=60, headers=lattice.auth)).status_code != 202 and r,
        "the result",
    )
    body = strict_loads(done.content)
    assert body["status"] == "failed"
    assert body["error"]["type"].endswith("SerializationError")
    assert "nan is not valid JSON" in body["error"]["message"]


def test_encoded_results_are_checked_before_they_are_answered() -> None:
    """A result from elsewhere (an older node, a re-encoded Python value) holding NaN."""
    assert checked(b'["NaN", "Infinity"]', "x") == b'["NaN", "Infinity"]'
    with pytest.raises(SerializationError, match=r"the result of a\.f cannot be answered as JSON"):
        checked(b'{"v": [1, NaN]}', "the result of a.f")
    with pytest.raises(ValueError, match="nan is not valid JSON"):
        strict_json.dumps(float("nan"))


# Slow clients and the connection cap ----------------------------------------------


class Trickler:
    """Connections that send a request a byte at a time and notice when they are cut off."""

    def __init__(self, url: str, count: int, head: bytes, at_once: bytes = b"") -> None:
        """``at_once`` goes out whole on connecting; then ``head``, a byte at a time."""
        host, port = url.removeprefix("http://").split(":")
        self.head = head
        self.open: dict[socket.socket, int] = {}
        self.answers: dict[socket.socket, bytes] = {}
        for _ in range(count):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(at_once)
            sock.setblocking(False)
            self.open[sock] = 0

    def step(self) -> int:
        """One more byte on each open connection; how many are still open."""
        for sock in list(self.open):
            if self._cut_off(sock):
                continue
            sent = self.open[sock]
            try:
                self.open[sock] = sent + sock.send(self.head[sent : sent + 1] or b"x")
            except BlockingIOError:
                pass
            except OSError:  # reset: cut off as well
                self._drop(sock)
        return len(self.open)

    def _cut_off(self, sock: socket.socket) -> bool:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return False
        except OSError:  # reset
            data = b""
        self.answers[sock] = self.answers.get(sock, b"") + data
        if data:
            return False
        self._drop(sock)
        return True

    def _drop(self, sock: socket.socket) -> None:
        del self.open[sock]
        self.answers.setdefault(sock, b"")
        sock.close()

    def close(self) -> None:
        for sock in [*self.open, *self.answers]:
            sock.close()


def trickle_until_closed(trickler: Trickler, what: str) -> None:
    def all_closed() -> bool:
        left = trickler.step()
        time.sleep(0.2)  # a byte every 0.2 s from each: slower than any deadline
        return left == 0

    poll(all_closed, what, timeout=90)


@pytest.fixture(scope="module", autouse=True)
def enough_fds() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4 * SLOW_CONNECTIONS)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def test_slow_headers_are_cut_off_while_calls_keep_working(lattice: Lattice, hello: str) -> None:
    """The issue's test: 1,000 slowloris connections at the default cap of 1,000."""
    with gateway(lattice, "--header-timeout", "3") as (url, _):
        head = b"POST /v1/call/hello.greet HTTP/1.1\r\nhost: x\r\n" + b"x-pad: y\r\n" * 100
        trickler = Trickler(url, SLOW_CONNECTIONS, head)
        try:
            trickler.step()
            response = httpx.post(
                f"{url}/v1/call/hello.greet",
                json={"args": ["slow"]},
                timeout=60,
                headers=lattice.auth,
            )
            assert response.status_code == 200
            assert response.json() == {"result": "Hello, slow!"}
            trickle_until_closed(trickler, "every slow connection to be closed")
            timed_out = [a for a in trickler.answers.values() if a.startswith(b"HTTP/1.1 408")]
            assert timed_out, "no connection was told why it was closed"
            assert b"headers did not arrive within 3 s" in timed_out[0]
            again = httpx.post(
                f"{url}/v1/call/hello.greet",
                json={"args": ["after"]},
                timeout=60,
                headers=lattice.auth,
            )
            assert again.status_code == 200
        finally:
            trickler.close()


def test_a_slow_body_is_cut_off_with_a_408(lattice: Lattice) -> None:
    with gateway(lattice, "--body-timeout", "2") as (url, _):
        head = b"POST /v1/call/hello.greet HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n"
        head += f"authorization: Bearer {lattice.token}\r\n\r\n".encode()
        trickler = Trickler(url, 3, b'{"args": ["' + b"z" * 980, at_once=head)
        try:
            trickle_until_closed(trickler, "the slow bodies to be cut off")
            for answer in trickler.answers.values():
                assert answer.startswith(b"HTTP/1.1 408"), answer
                assert b"body did not arrive within 2 s" in answer
        finally:
            trickler.close()


def test_past_the_cap_a_waiting_connection_gives_way_else_503(lattice: Lattice) -> None:
    with gateway(lattice, "--max-connections", "4", "--body-timeout", "120") as (url, _):
        host, port = url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(4)]
        try:
            poll(lambda: httpx.get(f"{url}/v1/health", timeout=5).status_code == 200, "health")
            poll(lambda: idle[0].recv(1) == b"", "the oldest idle connection to give way")
        finally:
            for sock in idle:
                sock.close()
        head = b"POST /v1/call/hello.greet HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n"
        head += f"authorization: Bearer {lattice.token}\r\n\r\n[".encode()
        busy = [socket.create_connection((host, int(port))) for _ in range(4)]
        try:
            for sock in busy:  # headers in, body pending: in the app's hands, not evictable
                sock.sendall(head)
            response = poll(lambda: _refused_or_none(url), "a new connection to be refused")
            assert response.status_code == 503
            assert error_of(response)["type"] == "TooManyConnections"
            assert "connection limit" in error_of(response)["message"]
        finally:
            for sock in busy:
                sock.close()
        assert poll(lambda: _refused_or_none(url, ok=True), "the gateway to serve again")


def _refused_or_none(url: str, ok: bool = False) -> httpx.Response | None:
    """A health check's answer when it is a 503 (or, with ``ok``, a 200)."""
    try:
        response = httpx.get(f"{url}/v1/health", timeout=5)
    except httpx.TransportError:
        return None
    return response if response.status_code == (200 if ok else 503) else None


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--max-connections", "0"], "--max-connections must be at least 1, got 0"),
        (["--header-timeout", "0"], "--header-timeout must be a number of seconds above 0"),
        (["--body-timeout", "nan"], "--body-timeout must be a number of seconds above 0"),
        (["--max-connections", "1000000000"], "needs 1000000256 open files"),
    ],
)
def test_bad_gateway_limits_are_refused_naming_the_flag(
    lattice: Lattice, flags: list[str], problem: str
) -> None:
    proc = superpose_cli("gateway", "--port", str(free_port()), *flags, url=lattice.url)
    assert proc.returncode != 0
    assert problem in proc.stderr


def test_limits_and_up_refuse_a_cap_below_one(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--header-timeout must be"):
        Limits(header_timeout_s=float("inf"))
    with pytest.raises(UserError, match="--gateway-max-connections must be at least 1, got 0"):
        LocalLattice(state_dir=tmp_path, gateway_max_connections=0)
    assert "--gateway-max-connections" in superpose_cli("up", "--help").stdout
