"""Nothing without credentials: the lattice's identities, and connections refused
without them (issue 15, item 1)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nats
import nats.errors
import pytest

import superpose as sp
from conftest import ROOT, Lattice, client_on, lattice_env, poll, raw_nats, superpose_cli
from superpose.client import session
from superpose.config import ENV_CREDS, settings
from superpose.errors import LatticeError, SettingError
from superpose.lattice.connection import connect
from superpose.local.embedded import EmbeddedServer
from superpose.local.state import write_state
from superpose.security import jwt
from superpose.security.creds import read_creds
from superpose.security.identities import ROLES, load_or_create
from superpose.security.lookup import registered


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The `superpose` command with no SUPERPOSE_ setting but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    return subprocess.run(
        [sys.executable, "-m", "superpose", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
        cwd=ROOT,
    )


def forged_creds(tmp_path: Path) -> Path:
    """Well-formed credentials of another operator: signed by keys the lattice never saw."""
    return load_or_create(tmp_path / "elsewhere").creds("admin")


async def test_the_server_refuses_a_bare_connection(lattice: Lattice) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(lattice.url, allow_reconnect=False, connect_timeout=2)


async def test_the_server_refuses_forged_credentials(lattice: Lattice, tmp_path: Path) -> None:
    forged = forged_creds(tmp_path)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            lattice.url, user_credentials=str(forged), allow_reconnect=False, connect_timeout=2
        )
    with pytest.raises(LatticeError) as caught:  # at once, not after the 10 s first try
        await connect(lattice.url, name="test-forged", creds=forged)
    assert caught.value.message.startswith(
        f"the lattice at {lattice.url} refused the connection: no valid credentials "
        f"(credentials {forged}; the server said 'Authorization Violation')"
    )
    assert "pass --creds FILE or set SUPERPOSE_CREDS" in caught.value.message


async def test_each_role_connects_with_its_creds(lattice: Lattice) -> None:
    for role in ROLES:
        nc = await connect(
            lattice.url, name=f"test-{role}", creds=lattice.lattice.identities.creds(role)
        )
        await nc.close()
    nc = await raw_nats(lattice.url)  # the conftest helper the other tests use
    await nc.close()


def test_the_cli_without_credentials_is_told_how_to_pass_them(lattice: Lattice) -> None:
    proc = cli("status", "--lattice", lattice.url)
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        f"error: the lattice at {lattice.url} refused the connection: no valid credentials "
        "(no credentials given; the server said 'Authorization Violation'); "
        "pass --creds FILE or set SUPERPOSE_CREDS"
    ), proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_cli_with_forged_credentials_is_refused(lattice: Lattice, tmp_path: Path) -> None:
    forged = forged_creds(tmp_path)
    proc = cli("status", "--lattice", lattice.url, "--creds", str(forged))
    assert proc.returncode == 1
    assert f"refused the connection: no valid credentials (credentials {forged};" in proc.stderr


def test_the_cli_connects_with_creds_flag_or_variable(lattice: Lattice) -> None:
    creds = lattice_env(lattice.url)[ENV_CREDS]
    by_flag = cli("status", "--lattice", lattice.url, "--creds", creds)
    assert by_flag.returncode == 0, by_flag.stderr
    assert f"lattice {lattice.url}" in by_flag.stdout
    by_variable = cli("status", **lattice_env(lattice.url))
    assert by_variable.returncode == 0, by_variable.stderr


def test_a_missing_creds_file_is_named(lattice: Lattice, tmp_path: Path) -> None:
    missing = tmp_path / "nope.creds"
    proc = cli("status", "--lattice", lattice.url, "--creds", str(missing))
    assert proc.returncode == 1
    assert proc.stderr == f"error: --creds {missing}: no such readable file\n"
    with pytest.raises(SettingError, match=f"{ENV_CREDS}='{missing}': no such file"):
        settings({ENV_CREDS: str(missing)})
    with pytest.raises(SettingError, match="no such file"):
        settings({ENV_CREDS: str(tmp_path)})  # a folder is not a creds file


def test_a_file_that_is_not_creds_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "x.creds"
    path.write_text("hello\n")
    with pytest.raises(LatticeError, match=f"{path} is not a NATS credentials file"):
        read_creds(path)


def test_sp_connect_takes_creds(lattice: Lattice) -> None:
    creds = registered(lattice.url)
    assert creds is not None
    previous = session.default_client()
    client = sp.connect(lattice.url, creds=creds, show_logs=False)
    try:
        assert client is not previous  # a client of its own: the creds asked for are used
        assert client.url == lattice.url
    finally:
        client.close()
        session.set_default(previous)
    with client_on(lattice):  # and finds them with none given (this process's lattice)
        pass


def test_identities_are_private_and_made_once(tmp_path: Path) -> None:
    first = load_or_create(tmp_path / "state")
    creds = {role: first.creds(role).read_text() for role in ROLES}
    again = load_or_create(tmp_path / "state")
    assert again.auth.system_account == first.auth.system_account
    assert again.auth.account_jwts.keys() == first.auth.account_jwts.keys()
    assert {role: again.creds(role).read_text() for role in ROLES} == creds
    state = tmp_path / "state"
    assert mode(state) == mode(state / "keys") == mode(state / "creds") == 0o700
    for secret in [*(state / "keys").iterdir(), *(state / "creds").iterdir()]:
        assert mode(secret) == 0o600, secret


def test_users_are_signed_by_the_lattice_account(tmp_path: Path) -> None:
    identities = load_or_create(tmp_path)
    token, seed = read_creds(identities.creds("node"))
    claims = jwt.claims_of(token)
    assert claims["iss"] in identities.auth.account_jwts
    assert claims["nats"]["type"] == "user"
    assert seed.startswith("SU")
    account = jwt.claims_of(identities.auth.account_jwts[claims["iss"]])
    assert account["nats"]["limits"]["disk_storage"] == -1  # JetStream on, unbounded


def test_a_key_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / "keys" / "SP.nk").write_text((tmp_path / "keys" / "operator.nk").read_text())
    with pytest.raises(LatticeError, match=r"SP\.nk holds a key of the wrong kind"):
        load_or_create(tmp_path)


def test_a_damaged_key_file_is_named(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / "keys" / "operator.nk").write_text("SOgarbage\n")
    with pytest.raises(LatticeError, match=r"operator\.nk: not a valid nkey seed"):
        load_or_create(tmp_path)


def test_the_lattice_state_is_owner_only(lattice: Lattice, tmp_path: Path) -> None:
    state = lattice.state_dir
    assert mode(state) == 0o700
    assert mode(state / "nats" / "nats.conf") == 0o600  # it holds the account JWTs
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    write_state(home, lattice.lattice)
    assert mode(home / "lattice.json") == 0o600


async def test_a_user_minted_with_permissions_is_held_to_them(lattice: Lattice) -> None:
    """What item 2 builds on: a user of the account limited to its own subjects."""
    narrow = lattice.lattice.identities.mint_user(
        "test-narrow", permissions={"pub": {"allow": ["mine.>"]}, "sub": {"allow": ["mine.>"]}}
    )
    refused = asyncio.Event()

    async def remember(exc: Exception) -> None:
        if "permissions violation" in str(exc).lower():
            refused.set()

    nc = await nats.connect(lattice.url, user_credentials=str(narrow), error_cb=remember)
    try:
        await nc.publish("sp.registry.x", b"no")
        await nc.flush()
        await nc.publish("mine.ok", b"yes")
        await nc.flush()
        await asyncio.wait_for(refused.wait(), 30)
    finally:
        await nc.close()


def test_a_worker_without_credentials_exits_saying_so(lattice: Lattice, tmp_path: Path) -> None:
    proc = cli("worker", "--lattice", lattice.url, "--state-dir", str(tmp_path / "node"))
    assert proc.returncode == 1
    assert f"the lattice at {lattice.url} refused the connection" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_worker_joins_with_node_creds_from_another_machine(
    lattice: Lattice, tmp_path: Path
) -> None:
    """Only the URL and the node's creds file, copied elsewhere: it serves calls (its
    executors connect with the same creds)."""
    creds = tmp_path / "node.creds"
    shutil.copy(lattice.lattice.identities.creds("node"), creds)
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "superpose", "worker", "--lattice", lattice.url),
            *("--creds", str(creds), "--labels", "joined=yes", "--slots", "1"),
            *("--state-dir", str(tmp_path / "node")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")},
        cwd=tmp_path,
    )
    try:

        def joined() -> bool:
            proc = superpose_cli("status", "--json", url=lattice.url, check=True)
            return any(n["labels"] == {"joined": "yes"} for n in json.loads(proc.stdout)["nodes"])

        poll(joined, "the worker started with --creds to join")
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_private_lattice_uses_its_own_creds_whatever_the_variable_says(
    tmp_path: Path,
) -> None:
    code = "import superpose as sp\nc = sp.connect(show_logs=False)\nprint(c.url)\nc.close()\n"
    forged = forged_creds(tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env={**clean, ENV_CREDS: str(forged)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("nats://127.0.0.1:")


async def test_a_store_from_before_credentials_is_refused_not_hidden(tmp_path: Path) -> None:
    """Its streams are the account $G's, encrypted with keys derived from it: a server
    in operator mode would start empty beside them."""
    old = tmp_path / "nats" / "jetstream" / "jetstream" / "$G"
    old.mkdir(parents=True)
    server = EmbeddedServer(tmp_path / "nats", auth=load_or_create(tmp_path).auth)
    with pytest.raises(LatticeError, match="was made before the lattice had credentials"):
        await server.start()
    assert server.process is None
