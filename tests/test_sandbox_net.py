"""A ``bwrap`` executor's network (issue 15, item 4): a namespace of its own whose one
way out is the lattice, relayed by its node (node/lattice_relay.py, its half
node/executor/relay.py). Everything a function needs of the lattice works through it,
for a caller-role client too; every other connection fails inside the function."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

import superpose as sp
from conftest import ROOT, Lattice, poll, start_lattice, stop_lattice, superpose_cli
from superpose import config
from superpose.errors import UserError
from superpose.lattice import tls
from superpose.node import lattice_relay, sandbox
from superpose.node.executor import relay
from test_cli import deploy, unique, write_app
from test_roles import connected, mint
from test_tls import launch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root can switch users")

APP = """
import os
import socket

import superpose as sp


def _try(host: str, port: int) -> str:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        return type(exc).__name__
    return "connected"


@sp.function
def outbound(nats_port: int) -> dict[str, str]:
    return {
        "internet": _try("1.1.1.1", 53),
        "host's nats": _try("127.0.0.1", nats_port),
        "host's nats by name": _try("localhost", nats_port),
    }


@sp.function
def leaf(x: int) -> int:
    return x * 2


@sp.function
def nested(x: int) -> dict[str, object]:
    return {"sync": leaf.remote(x), "durable": leaf.spawn(x).result(timeout=60)}


@sp.function
def counter(name: str) -> int:
    return sp.Dict(name).incr("n")


@sp.function
def size(blob: bytes) -> int:
    return len(blob)


@sp.function
def echo(blob: bytes) -> bytes:
    return blob


@sp.function
def crash() -> None:
    os._exit(3)
"""


@pytest.fixture(scope="module")
def bwrap_lattice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    handle = start_lattice(
        tmp_path_factory.mktemp("netns"),
        workers=1,
        env={"SUPERPOSE_SANDBOX": "bwrap"},
    )
    yield handle
    stop_lattice(handle)


@pytest.fixture(scope="module")
def app(bwrap_lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = unique("netapp")
    deploy(bwrap_lattice, write_app(tmp_path_factory.mktemp(name) / name, {"mod.py": APP}))
    return name


def test_no_connection_but_the_lattice(bwrap_lattice: Lattice, app: str) -> None:
    port = urlsplit(bwrap_lattice.url).port
    with connected(bwrap_lattice, mint(bwrap_lattice, "caller")) as client:
        tried = client.function(f"{app}.outbound").remote(port)
    assert tried["internet"] in ("OSError", "TimeoutError"), tried  # unreachable network
    assert tried["host's nats"] == "ConnectionRefusedError", tried  # its own loopback
    assert tried["host's nats by name"] == "ConnectionRefusedError", tried


def test_calls_nested_calls_spawns_and_dicts_go_through_the_relay(
    bwrap_lattice: Lattice, app: str
) -> None:
    with connected(bwrap_lattice, mint(bwrap_lattice, "caller")) as client:
        assert client.function(f"{app}.nested").remote(21) == {"sync": 42, "durable": 42}
        durable = client.function(f"{app}.nested").spawn(5)
        assert durable.result(timeout=60) == {"sync": 10, "durable": 10}
        name = unique("d")
        assert client.function(f"{app}.counter").remote(name) == 1
        assert client.function(f"{app}.counter").remote(name) == 2


def test_a_megabyte_crosses_both_ways(bwrap_lattice: Lattice, app: str) -> None:
    blob = os.urandom(2**20)  # above the bulk threshold: shared memory is not shared here
    with connected(bwrap_lattice) as client:
        assert client.function(f"{app}.size").remote(blob) == 2**20
        assert client.function(f"{app}.echo").remote(blob) == blob


NET_TABLES = ("unix", "tcp", "tcp6", "udp", "udp6", "raw", "raw6", "netlink", "packet")
INODE_COLUMN = {"unix": 6, "netlink": 8, "packet": 8}
"""Where each /proc/<pid>/net table keeps a socket's inode (tcp, udp and raw: 9)."""


def _sockets_of_namespace_of(pid: int) -> set[str]:
    """The inode of every socket of the network namespace ``pid`` is in."""
    found = set()
    for table in NET_TABLES:
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue  # no such table, or the process is gone
        column = INODE_COLUMN.get(table, 9)
        found.update(line.split()[column] for line in lines if len(line.split()) > column)
    return found


def _orphaned_sockets(node_pid: int) -> set[str]:
    """The node's sockets in no network namespace a process still lives in: a relayed
    connection whose executor is gone would be one (its socket belongs to the
    executor's namespace, which only it keeps alive then)."""
    held = set()
    for fd in Path(f"/proc/{node_pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            held.add(target[8:-1])
    executors = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _is_executor(entry)
    ]
    for pid in [node_pid, *executors]:
        held -= _sockets_of_namespace_of(pid)
    return held


def _is_executor(entry: Path) -> bool:
    try:
        return b"superpose.cli.executor" in (entry / "cmdline").read_bytes()
    except OSError:
        return False


def test_an_executor_that_dies_leaves_no_relayed_connection(
    bwrap_lattice: Lattice, app: str
) -> None:
    (node,) = [c for c in bwrap_lattice.lattice.children if "worker" in c.argv]
    assert node.process is not None
    node_pid = node.process.pid
    with connected(bwrap_lattice) as client:
        assert client.function(f"{app}.leaf").remote(1) == 2
        poll(lambda: not _orphaned_sockets(node_pid), "every relayed connection has its executor")
        with pytest.raises(sp.RemoteError):
            client.function(f"{app}.crash").remote()
        assert client.function(f"{app}.leaf").remote(2) == 4  # a new executor serves
    poll(lambda: not _orphaned_sockets(node_pid), "no relayed connection without its executor")


def test_an_http_app_answers_through_the_gateway(bwrap_lattice: Lattice) -> None:
    deploy(bwrap_lattice, ROOT / "examples" / "site", "--asgi", "main:app")
    with httpx.Client(
        base_url=bwrap_lattice.gateway, headers=bwrap_lattice.auth, timeout=60
    ) as http:
        page = http.post("/site/greet", data={"name": "netns"})
    assert page.status_code == 200 and page.text == "<p>Hello, netns!</p>"


def test_a_tls_lattice_is_reached_through_the_relay(tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    up = launch(tmp_path, "--tls", "--sandbox", "bwrap")
    try:  # the certificate is checked against the lattice's name, not the relay's
        superpose_cli("deploy", str(ROOT / "examples" / "hello"), home=up.home, check=True)
        called = superpose_cli("call", "hello.greet", '["tls"]', home=up.home, check=True)
        assert called.stdout.strip() == '"Hello, tls!"'
    finally:
        superpose_cli("down", home=up.home)


# --- the relay's two halves, on their own ------------------------------------------


async def _echo_server() -> tuple[asyncio.AbstractServer, int, list[asyncio.StreamWriter]]:
    """A TCP server that echoes; the writers of the connections it has, to watch them."""
    held: list[asyncio.StreamWriter] = []

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()
        held.remove(w)

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], held


async def _until(condition: object) -> None:
    while not condition():  # type: ignore[operator]
        await asyncio.sleep(0.01)


async def test_the_node_relay_splices_and_leaves_nothing(tmp_path: Path) -> None:
    server, port, held = await _echo_server()
    opened = await lattice_relay.LatticeRelay.open(tmp_path / "relay", f"nats://127.0.0.1:{port}")
    assert opened.path.stat().st_mode & 0o777 == 0o666
    r, w = await asyncio.open_unix_connection(str(opened.path))
    w.write(b"PING\r\n" * 50000)
    assert await r.readexactly(300000) == b"PING\r\n" * 50000
    w.close()  # the executor's side ends: the lattice's side ends with it
    await asyncio.wait_for(_until(lambda: not held and not opened._pumps), 10)
    r, w = await asyncio.open_unix_connection(str(opened.path))
    w.write(b"x")
    assert await r.readexactly(1) == b"x"
    await opened.close()  # the node stops: every relayed connection is cut
    assert await asyncio.wait_for(r.read(), 10) == b""
    assert not (tmp_path / "relay").exists()
    await asyncio.wait_for(_until(lambda: not held), 10)
    server.close()


async def test_the_executor_relay_reaches_the_node_socket(tmp_path: Path) -> None:
    server, port, held = await _echo_server()
    opened = await lattice_relay.LatticeRelay.open(tmp_path / "relay", f"nats://127.0.0.1:{port}")
    inner = relay.start(str(opened.path))
    r, w = await asyncio.open_connection("127.0.0.1", inner)
    w.write(b"hello")
    assert await r.readexactly(5) == b"hello"
    w.close()
    await asyncio.wait_for(_until(lambda: not held and not opened._pumps), 10)
    await opened.close()
    server.close()


async def test_a_lattice_nobody_answers_closes_the_relayed_connection(tmp_path: Path) -> None:
    server, port, _ = await _echo_server()
    server.close()
    await server.wait_closed()  # nothing listens on ``port`` now
    opened = await lattice_relay.LatticeRelay.open(tmp_path / "relay", f"nats://127.0.0.1:{port}")
    r, _w = await asyncio.open_unix_connection(str(opened.path))
    assert await asyncio.wait_for(r.read(), 10) == b""
    await opened.close()


def test_the_relayed_url_keeps_scheme_user_and_the_name_tls_checks() -> None:
    assert relay.relayed_url("tls://nats.example:4443", 5000) == (
        "tls://127.0.0.1:5000",
        "nats.example",
    )
    assert relay.relayed_url("nats://u:p@a:1,nats://b:2", 7) == ("nats://u:p@127.0.0.1:7", "a")


def test_a_websocket_lattice_is_refused_for_bwrap_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"'ws://h:80'.*websocket.*--sandbox user"):
        sandbox.Confinement.for_node("bwrap", tmp_path, "n1", "ws://h:80")


def test_a_relayed_connection_checks_the_lattices_name(monkeypatch: pytest.MonkeyPatch) -> None:
    relayed_url, name = relay.relayed_url("tls://nats.example:4443", 5000)
    assert "tls_hostname" not in tls.trust_for(relayed_url).options()
    monkeypatch.setenv(config.ENV_TLS_SERVER_NAME, name)  # as the executor sets it
    assert tls.trust_for(relayed_url).options()["tls_hostname"] == "nats.example"


async def test_executors_claimed_at_once_share_one_relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = []
    real_open = lattice_relay.LatticeRelay.open

    async def counted(folder: Path, lattice: str) -> lattice_relay.LatticeRelay:
        opened.append(folder)
        return await real_open(folder, lattice)

    monkeypatch.setattr(sandbox.LatticeRelay, "open", counted)
    server, port, _ = await _echo_server()
    confinement = sandbox.Confinement("bwrap", tmp_path, lattice=f"nats://127.0.0.1:{port}")
    identities = await asyncio.gather(*(confinement.claim() for _ in range(3)))
    try:
        assert confinement.relay is not None and confinement.relay.path.exists()
        assert len(opened) == 1
    finally:
        for identity in identities:
            await identity.release()
        await confinement.close()
        server.close()
    assert confinement.relay is None and not (tmp_path / "relay").exists()
