"""Least privilege on the wire (issue 15, item 2): each role's NATS permissions let it
do its own work and refuse the attacks of the issue with a permission error."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

import superpose as sp
import wheelhouse
from conftest import ROOT, Lattice
from superpose import protocol
from superpose.client import session
from superpose.code.environments import this_platform, this_python
from superpose.lattice import objects
from superpose.security import roles
from superpose.security.identities import load_or_create
from test_cli import deploy, unique, write_app

HELLO = ROOT / "examples" / "hello"
VIOLATION = "permissions violation"
SEVEN = """
import superpose as sp


@sp.function
def seven() -> int:
    return 7
"""
PACKAGED = """
import superpose as sp


@sp.function
def package_version() -> str:
    import tinysolo

    return tinysolo.VERSION
"""
THEIRS = protocol.env_digest("tinyone==1.0\n", this_python(), this_platform())
"""An environment another app runs with: its digest is its content, shared by every app
that declares the same packages."""


def mint(lattice: Lattice, role: str, app: str | None = None) -> Path:
    name = unique(role)
    permissions = roles.permissions(role, owner=name, app=app)
    return lattice.lattice.identities.mint_user(name, permissions=permissions)


class Wire:
    """A bare nats-py connection with some creds, keeping the errors the server sends."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.arrived = asyncio.Event()
        self.nc: Any = None

    async def open(self, url: str, creds: Path) -> Wire:
        async def keep(exc: Exception) -> None:
            self.errors.append(str(exc).lower())
            self.arrived.set()

        self.nc = await nats.connect(
            url, user_credentials=str(creds), error_cb=keep, allow_reconnect=False
        )
        return self

    async def refused(self, what: str) -> str:
        """The server's permission error naming ``what``, once it has arrived."""
        what = what.lower()

        async def arrival() -> str:
            while True:
                found = next((e for e in self.errors if VIOLATION in e and what in e), None)
                if found:
                    return found
                self.arrived.clear()
                await self.arrived.wait()

        return await asyncio.wait_for(arrival(), timeout=10)


@pytest.fixture
async def wire() -> AsyncIterator[Callable[..., Any]]:
    opened: list[Wire] = []

    async def open_(url: str, creds: Path) -> Wire:
        opened.append(await Wire().open(url, creds))
        return opened[-1]

    yield open_
    for w in opened:
        await w.nc.close()


@pytest.fixture(scope="module")
def hello(lattice: Lattice) -> str:
    return deploy(lattice, HELLO)


def cli(lattice: Lattice, creds: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    env |= {"SUPERPOSE_LATTICE": lattice.url, "SUPERPOSE_CREDS": str(creds)}
    return subprocess.run(
        [sys.executable, "-m", "superpose", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=ROOT,
    )


# --- each role's own work ---------------------------------------------------------


@contextmanager
def connected(lattice: Lattice, creds: Path | None = None) -> Iterator[sp.Client]:
    """A client with ``creds`` (None: the lattice's admin) for one block (the session's
    default comes back)."""
    previous = session.default_client()
    session.set_default(None)
    client = sp.connect(lattice.url, show_logs=False, creds=creds)
    try:
        yield client
    finally:
        client.close()
        session.set_default(previous)


def test_a_caller_calls_and_reads_its_durable_result(lattice: Lattice, hello: str) -> None:
    with connected(lattice, mint(lattice, "caller")) as client:
        assert client.id.startswith("caller_")  # under its user's name: all it may read
        greet = client.function("hello.greet")
        assert greet.remote("direct") == "Hello, direct!"
        future = greet.spawn("durable")
        assert future.result(timeout=60) == "Hello, durable!"
        assert future.invocation_id.startswith(client.id + ".")
        assert client.result(future.invocation_id, timeout=10) == "Hello, durable!"


def test_a_deployer_deploys_and_a_viewer_reads_status(lattice: Lattice, tmp_path: Path) -> None:
    folder = write_app(tmp_path / unique("dep"), {"mod.py": SEVEN})
    deployed = cli(lattice, mint(lattice, "deployer"), "deploy", str(folder))
    assert deployed.returncode == 0, deployed.stderr
    status = cli(lattice, mint(lattice, "viewer"), "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)


def test_a_deployer_of_one_app_deploys_it_with_packages(
    lattice: Lattice, client: sp.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It records the environment (``env.<digest>``); the node that builds it stores
    the archive, which the deployer may only read (``env ls`` shows its size)."""
    monkeypatch.setenv("UV_FIND_LINKS", str(wheelhouse.build(tmp_path / "wheels")))
    monkeypatch.setenv("UV_NO_INDEX", "1")  # the deploy resolves with the local wheels
    app = unique("pkgs")
    folder = write_app(tmp_path / app, {"mod.py": PACKAGED, "requirements.txt": "tinysolo\n"})
    creds = mint(lattice, "deployer", app=app)
    deployed = cli(lattice, creds, "deploy", str(folder))
    assert deployed.returncode == 0, deployed.stderr
    with connected(lattice, creds) as mine:
        assert mine.function(f"{app}.package_version").remote() == "1.0"
        env = mine.resolve(app, "package_version").env
    archive = protocol.env_archive(env)
    assert client.run(objects.size(client.nc.jetstream(), protocol.ENVS_BUCKET, archive))
    listed = cli(lattice, creds, "env", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert next(e for e in json.loads(listed.stdout) if e["digest"] == env)["size"]


# --- the attacks of issue 15 -------------------------------------------------------


async def test_a_caller_cannot_move_an_alias(lattice: Lattice, hello: str, wire: Any) -> None:
    w = await wire(lattice.url, mint(lattice, "caller"))
    subject = protocol.kv_subject(protocol.REGISTRY_BUCKET, protocol.alias_key("hello", "latest"))
    with pytest.raises(nats.errors.Error):
        await w.nc.jetstream().publish(subject, b"0" * 64, timeout=1)
    await w.refused(f'Publish to "{subject}"')


async def test_a_caller_cannot_upload_a_bundle(lattice: Lattice, wire: Any) -> None:
    w = await wire(lattice.url, mint(lattice, "caller"))
    subject = protocol.object_chunk_subject(protocol.BUNDLES_BUCKET, "evil")
    with pytest.raises(nats.errors.Error):
        await w.nc.jetstream().publish(subject, b"evil", timeout=1)
    await w.refused(f'Publish to "{subject}"')


def env_writes(digest: str) -> list[str]:
    """Writing an environment's archive (a chunk, its metadata) or a node's build
    records of it (failed, being built)."""
    meta = base64.urlsafe_b64encode(protocol.env_archive(digest).encode()).decode()
    return [
        protocol.object_chunk_subject(protocol.ENVS_BUCKET, "evil"),
        protocol.object_meta_subject(protocol.ENVS_BUCKET, meta),
        protocol.kv_subject(protocol.REGISTRY_BUCKET, protocol.env_failure_key(digest)),
        protocol.kv_subject(protocol.REGISTRY_BUCKET, protocol.env_build_key(digest)),
    ]


async def refused_writes(w: Wire, subjects: list[str]) -> None:
    """Each write goes unanswered (nothing stored it) and the server names it refused."""
    for subject in subjects:
        with pytest.raises(nats.errors.Error):
            await w.nc.jetstream().publish(subject, b"evil", timeout=1)
        await w.refused(f'Publish to "{subject}"')


async def test_a_deployer_cannot_touch_another_apps_environment(
    lattice: Lattice, wire: Any
) -> None:
    w = await wire(lattice.url, mint(lattice, "deployer", app=unique("mine")))
    await refused_writes(w, env_writes(THEIRS))


async def test_a_gateway_cannot_touch_an_environment(lattice: Lattice, wire: Any) -> None:
    w = await wire(lattice.url, lattice.lattice.identities.creds("gateway"))
    record = protocol.kv_subject(protocol.REGISTRY_BUCKET, protocol.env_key(THEIRS))
    await refused_writes(w, [*env_writes(THEIRS), record])


async def test_a_caller_cannot_see_other_clients_calls(
    lattice: Lattice, hello: str, client: sp.Client, wire: Any
) -> None:
    w = await wire(lattice.url, mint(lattice, "caller"))
    seen: list[Any] = []

    async def keep(msg: Any) -> None:
        seen.append(msg)

    await w.nc.subscribe(">", cb=keep)
    await w.refused('Subscription to ">"')
    w2 = await wire(lattice.url, mint(lattice, "caller"))
    await w2.nc.subscribe(protocol.CALL_WILDCARD, cb=keep)
    await w2.refused(f'Subscription to "{protocol.CALL_WILDCARD}"')
    shout = client.function("hello.shout")  # the session's admin client calls
    assert await asyncio.to_thread(shout.remote, "secret") == "SECRET!"
    assert seen == []


async def test_a_caller_cannot_read_another_clients_results(
    lattice: Lattice, hello: str, wire: Any
) -> None:
    def theirs() -> str:
        with connected(lattice, mint(lattice, "caller")) as other:
            future = other.function("hello.greet").spawn("x")
            future.result(timeout=60)
            return future.invocation_id

    invocation_id = await asyncio.to_thread(theirs)
    w = await wire(lattice.url, mint(lattice, "caller"))
    results = protocol.direct_get_subject(protocol.RESULTS_STREAM)
    subject = f"{results}.{protocol.results_subject(invocation_id)}"
    with pytest.raises(nats.errors.Error):
        await w.nc.request(subject, b"", timeout=1)
    await w.refused(f'Publish to "{subject}"')
    w2 = await wire(lattice.url, mint(lattice, "caller"))
    with pytest.raises(nats.errors.Error):  # by sequence: any result
        await w2.nc.request(results, b'{"seq": 1}', timeout=1)
    await w2.refused(f'Publish to "{results}"')


async def test_a_viewer_cannot_call(lattice: Lattice, hello: str, wire: Any) -> None:
    w = await wire(lattice.url, mint(lattice, "viewer"))
    subject = protocol.call_subject("hello", "greet")
    await w.nc.publish(subject, b"")
    await w.refused(f'Publish to "{subject}"')


async def test_a_node_cannot_move_an_alias(lattice: Lattice, hello: str, wire: Any) -> None:
    w = await wire(lattice.url, lattice.lattice.identities.creds("node"))
    subject = protocol.kv_subject(protocol.REGISTRY_BUCKET, protocol.alias_key("hello", "latest"))
    with pytest.raises(nats.errors.Error):
        await w.nc.jetstream().publish(subject, b"0" * 64, timeout=1)
    await w.refused(f'Publish to "{subject}"')
    w2 = await wire(lattice.url, lattice.lattice.identities.creds("node"))
    tokens = protocol.direct_get_subject(protocol.kv_stream(protocol.TOKENS_BUCKET))
    with pytest.raises(nats.errors.Error):
        await w2.nc.request(f"{tokens}.$KV.sp_tokens.x", b"", timeout=1)
    await w2.refused("KV_sp_tokens")


async def test_an_app_caller_calls_that_app_only(lattice: Lattice, hello: str, wire: Any) -> None:
    w = await wire(lattice.url, mint(lattice, "caller", app="other"))
    subject = protocol.call_subject("hello", "greet")
    await w.nc.publish(subject, b"")
    await w.refused(f'Publish to "{subject}"')


# --- superpose creds create|ls ------------------------------------------------------


def creds_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    return subprocess.run(
        [sys.executable, "-m", "superpose", "creds", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "SUPERPOSE_HOME": str(home)},
        cwd=ROOT,
    )


def test_creds_create_mints_a_user_and_ls_lists_it(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    made = creds_cli(tmp_path, "create", "--role", "caller", "--app", "hello", "--name", "ci")
    assert made.returncode == 0, made.stderr
    path = Path(made.stdout.strip())
    assert path == tmp_path / "creds" / "ci.creds" and path.stat().st_mode & 0o077 == 0
    assert roles.owner_of(path) == "ci"
    listed = json.loads(creds_cli(tmp_path, "ls", "--json").stdout)
    assert [(m["name"], m["role"], m["app"]) for m in listed] == [("ci", "caller", "hello")]
    out = tmp_path / "v.creds"
    assert creds_cli(tmp_path, "create", "--role", "viewer", "--out", str(out)).returncode == 0
    assert "viewer-" in creds_cli(tmp_path, "ls").stdout and out.is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--role", "admin"), "--role 'admin' is not a role creds can be made for"),
        (("--role", "root"), "use one of deployer, caller, viewer, node"),
        (("--role", "caller", "--app", "a.b"), "--app 'a.b' is not an app name"),
        (("--role", "node", "--app", "x"), "--app does not apply to --role node"),
        (("--role", "caller", "--name", "a.b"), "--name 'a.b' cannot name a user"),
        (("--role", "caller", "--name", "node"), "--name 'node' cannot name a user"),
        (("--role", "caller", "--out", "/nonexistent/x.creds"), "no folder /nonexistent"),
    ],
)
def test_bad_creds_create_input_is_a_clear_error(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    load_or_create(tmp_path)
    made = creds_cli(tmp_path, "create", *args)
    assert made.returncode != 0 and message in made.stderr, made.stderr
    assert not (tmp_path / "creds" / "index.json").exists()


def test_creds_create_needs_the_lattice_keys(tmp_path: Path) -> None:
    made = creds_cli(tmp_path, "create", "--role", "caller")
    assert made.returncode != 0
    assert "no lattice account key in" in made.stderr and "where `superpose up`" in made.stderr
    assert not (tmp_path / "keys").exists()


def test_a_taken_name_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    assert creds_cli(tmp_path, "create", "--role", "caller", "--name", "ci").returncode == 0
    again = creds_cli(tmp_path, "create", "--role", "viewer", "--name", "ci")
    assert again.returncode != 0 and "--name 'ci' is taken" in again.stderr
