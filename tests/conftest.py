"""Fixtures: a real lattice (nats-server + node processes + gateway) per test session."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import superpose as sp
import wheelhouse
from superpose.client import session
from superpose.local.lattice import LocalLattice
from superpose.security import lookup

ROOT = Path(__file__).resolve().parents[1]

# Nodes the suite starts run user code as the node's user unless a test asks for a
# sandbox (tests/test_sandbox.py): many test functions leave markers in pytest's tmp
# folders, which are 0700 and so out of a sandboxed executor's reach by design.
os.environ.setdefault("SUPERPOSE_SANDBOX", "none")


@dataclass
class Lattice:
    url: str
    gateway: str
    state_dir: Path
    lattice: LocalLattice
    loop: asyncio.AbstractEventLoop
    token: str = ""
    """The admin token the lattice's start wrote to ``gateway.token`` ("" without a gateway)."""

    @property
    def auth(self) -> dict[str, str]:
        """The header every request to the gateway sends (``/v1/health`` excepted)."""
        return {"Authorization": f"Bearer {self.token}"}

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


CHILD_WARNINGS = "always::ResourceWarning"
"""On in the lattice's own processes (nodes, executors, gateway), and any in their logs
fails the lattice's teardown: a socket left to the garbage collector once closed a
descriptor the event loop had given to another executor, and uvloop aborted the node."""


def start_lattice(
    state_dir: Path,
    *,
    workers: int = 2,
    slots: int = 1,
    gateway: bool = True,
    servers: int = 1,
    env: dict[str, str] | None = None,
) -> Lattice:
    """A lattice of its own; ``env`` is set for the processes it starts (and only those)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    lattice = LocalLattice(
        state_dir=state_dir,
        workers=workers,
        slots=slots,
        servers=servers,
        gateway_port=0 if gateway else None,
        drain_grace_s=2.0,
    )
    children = {"PYTHONWARNINGS": CHILD_WARNINGS, **(env or {})}
    before = {name: os.environ.get(name) for name in children}
    os.environ.update(children)  # read by the children it starts now
    try:
        url = asyncio.run_coroutine_threadsafe(lattice.start(), loop).result()
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    token = lattice.gateway_token.read_text().strip() if lattice.gateway_token else ""
    return Lattice(url, lattice.gateway_url, state_dir, lattice, loop, token)


def stop_lattice(handle: Lattice) -> None:
    handle.run(handle.lattice.stop())
    handle.loop.call_soon_threadsafe(handle.loop.stop)
    warned = [
        f"{log.relative_to(handle.state_dir)}: {line}"
        for log in sorted(handle.state_dir.rglob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if "ResourceWarning" in line
    ]
    assert not warned, "the lattice's processes left resources to the garbage collector:\n" + (
        "\n".join(warned[:20])
    )


@contextmanager
def client_on(handle: Lattice) -> Iterator[sp.Client]:
    """A client on another lattice for one block; the session's default client comes back.

    ``connect()`` to a second URL makes that client the process default, so tests
    that run their own lattice must hand the default back when they are done.
    """
    previous = session.default_client()
    client = sp.connect(handle.url, show_logs=False)
    try:
        yield client
    finally:
        if client is not previous:  # the default already on that lattice stays open
            client.close()
        session.set_default(previous)


@pytest.fixture(scope="session")
def lattice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    """Two nodes with one slot each (the smallest lattice that can deadlock), plus a gateway.
    Its nodes build environments from the tests' own wheelhouse, never the registry."""
    wheels = wheelhouse.build(tmp_path_factory.mktemp("session-wheels"))
    handle = start_lattice(
        tmp_path_factory.mktemp("lattice"),
        env={"UV_FIND_LINKS": str(wheels), "UV_NO_INDEX": "1"},
    )
    yield handle
    stop_lattice(handle)


@pytest.fixture(scope="session")
def client(lattice: Lattice) -> Iterator[sp.Client]:
    c = sp.connect(lattice.url)
    yield c
    c.close()


def lattice_env(url: str) -> dict[str, str]:
    """What a process this test starts needs to use the lattice at ``url``: the URL and
    the admin credentials of the LocalLattice (in this process) that serves it."""
    creds = lookup.registered(url)
    return {"SUPERPOSE_LATTICE": url, **({"SUPERPOSE_CREDS": str(creds)} if creds else {})}


async def on_fresh_server(
    state_dir: Path, then: Callable[[Any], Awaitable[Any]] | None = None
) -> Any:
    """A nats-server of its own in ``state_dir`` with the lattice's assets made (what
    every process of a new lattice does first), ``then(nc)`` run on a connection to
    it; its answer. The server is gone afterwards."""
    from superpose.lattice.connection import connect, ensure_assets
    from superpose.local.embedded import EmbeddedServer

    server = EmbeddedServer(state_dir)
    url = await server.start()
    try:
        nc = await connect(url, name="test-fresh-server")
        try:
            await ensure_assets(nc)
            return None if then is None else await then(nc)
        finally:
            await nc.close()
    finally:
        server.stop()


async def raw_nats(url: str, **options: Any) -> Any:
    """A bare nats-py connection to a LocalLattice of this process, with its creds."""
    import nats

    creds = lookup.registered(url)
    servers = url.split(",")  # a cluster's URL names each server
    return await nats.connect(servers, user_credentials=str(creds) if creds else None, **options)


def superpose_cli(
    *args: str,
    url: str | None = None,
    home: Path | None = None,
    timeout: float = 60,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run the real `superpose` command, as a user would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    if url:
        env.update(lattice_env(url))
    if home:
        env["SUPERPOSE_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-m", "superpose", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=home or ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"superpose {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def poll(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """``check()``'s first truthy answer; fails naming ``what`` after ``timeout`` seconds.

    Tests wait on events this way, never with fixed sleeps.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def read_until_exit(fd: int, proc: subprocess.Popen[bytes]) -> str:
    """What ``proc`` writes to the terminal ``fd`` (a pty's leader) until it exits;
    closes ``fd``."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


async def bare_executor(url: str, node_id: str) -> Any:
    """An executor process with no node agent around it: the test sends its frames."""
    from superpose.node.executor_process import ExecutorProcess

    return await ExecutorProcess.start(
        url, node_id, lambda call: None, lambda call: None, subprocess.DEVNULL
    )


def bare_invocation(inv_id: str, digest: str, module: str, qualname: str, *args: Any) -> Any:
    """An invocation of ``module.qualname(*args)`` in the bundle ``digest``, for a bare
    executor that has loaded it (its app is named after the module)."""
    from superpose import protocol
    from superpose.lattice import payload

    return protocol.Invocation(
        id=inv_id,
        app=module,
        fn=qualname,
        digest=digest,
        module=module,
        qualname=qualname,
        args=protocol.Payload(
            protocol.CODEC_PICKLE, payload.encode_args(args, {}, protocol.CODEC_PICKLE)
        ),
        deadline=time.time() + 60,
    )


def raw_call(client: sp.Client, function: Any, inv_id: str, args: Any, deadline: float) -> Any:
    """Send a hand-built invocation of ``function`` (its ``protocol.Payload`` of
    arguments and its deadline as given) straight to the queue group; its ``Result``."""
    from superpose import protocol

    target = function._target(client)
    inv = protocol.Invocation(
        id=inv_id,
        app=target.app,
        fn=target.fn,
        digest=target.digest,
        module=target.module,
        qualname=target.qualname,
        args=args,
        deadline=deadline,
    )

    async def request() -> protocol.Result:
        subject = protocol.call_subject(target.app, target.fn)
        reply = await client.nc.request(subject, inv.encode(), timeout=20)
        return protocol.Result.decode(reply.data)

    return client.run(request())
