"""Revoking a minted user (issue 15, item 2): the account JWT's revocations, applied by a
config reload with no restart, kept by the next ``up``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

import superpose as sp
from conftest import ROOT, Lattice, poll, superpose_cli
from superpose.errors import BadRequestError, LatticeError
from superpose.lattice.connection import connect
from superpose.local.embedded import EmbeddedServer, free_port
from superpose.security import executor_identity, jwt, minting, node_signers, revocations
from superpose.security.creds import read_creds
from superpose.security.identities import KEYS_DIR, LATTICE_ACCOUNT, load_or_create
from test_cli import deploy, unique
from test_roles import connected

HELLO = ROOT / "examples" / "hello"


@pytest.fixture(scope="module")
def hello(lattice: Lattice) -> str:
    return deploy(lattice, HELLO)


def refused(url: str, creds: Path | None = None, *, creds_text: str | None = None) -> str:
    """The server's refusal of a new connection with ``creds`` (a file, or its text)
    ("" if it connected)."""

    async def attempt() -> str:
        try:
            nc = await connect(url, name="test-revoked", creds=creds, creds_text=creds_text)
        except LatticeError as exc:
            return exc.message
        await nc.close()
        return ""

    return asyncio.run(attempt())


def reload(lattice: Lattice) -> None:
    """What ``creds revoke`` asks of a running ``up``: reload the servers' accounts."""
    lattice.loop.call_soon_threadsafe(lattice.lattice.reload_accounts)


def test_a_revoked_caller_is_refused_and_disconnected(lattice: Lattice, hello: str) -> None:
    victim = minting.create(lattice.state_dir, "caller", app=None, name=unique("gone"), out=None)
    other = minting.create(lattice.state_dir, "caller", app=None, name=unique("kept"), out=None)
    victim_creds, other_creds = Path(victim.path), Path(other.path)
    with connected(lattice, victim_creds) as client:
        assert client.function("hello.greet").remote("before") == "Hello, before!"
        raw = lattice.run(  # no reconnects: closed means closed by the server
            nats.connect(lattice.url, user_credentials=str(victim_creds), allow_reconnect=False)
        )
        kept = lattice.run(nats.connect(lattice.url, user_credentials=str(other_creds)))
        minting.revoke(lattice.state_dir, victim.name)
        reload(lattice)
        # A connect during the reload itself may fail otherwise: wait for the refusal.
        poll(
            lambda: "Authorization Violation" in refused(lattice.url, victim_creds),
            "the revoked user refused",
        )
        message = refused(lattice.url, victim_creds)
        assert "refused the connection" in message and "Authorization Violation" in message
        poll(lambda: raw.is_closed, "the revoked user's open connection closed", timeout=10)
        with pytest.raises(sp.SuperposeError):
            client.function("hello.greet").remote("after", timeout=10)
    assert kept.is_connected and not kept.is_closed  # other users saw nothing
    lattice.run(kept.flush(timeout=5))
    with connected(lattice, other_creds) as client:
        assert client.function("hello.greet").remote("other") == "Hello, other!"
    assert refused(lattice.url, lattice.lattice.identities.creds("admin")) == ""
    lattice.run(kept.close())


def test_revoking_an_unknown_name_is_refused_naming_it(lattice: Lattice) -> None:
    with pytest.raises(BadRequestError, match="no user named 'nobody-here' was minted in"):
        minting.revoke(lattice.state_dir, "nobody-here")


def test_revoking_twice_keeps_the_first_time(tmp_path: Path) -> None:
    state = tmp_path / "state"
    load_or_create(state)
    made = minting.create(state, "viewer", app=None, name="twice", out=None)
    minting.revoke(state, "twice")
    first = minting.revoked(state)
    minting.revoke(state, "twice")
    assert minting.revoked(state) == first == {made.public_key: first[made.public_key]}
    # The index row knows its key; an older row (no key) is read from its creds file.
    assert made.public_key == jwt.claims_of(read_creds(Path(made.path))[0])["sub"]
    older = minting.Minted(**{**made.__dict__, "public_key": ""})
    assert minting.public_key_of(older) == made.public_key
    Path(made.path).unlink()
    with pytest.raises(sp.UserError, match="its public key is not in the index and its creds"):
        minting.public_key_of(older)


@pytest.mark.parametrize(
    ("listing", "bad_entry", "what"),
    [
        (revocations, '{"U1": "soon"}', "revocations list"),
        (node_signers, '{"n1": "Unot-an-account-key"}', "node signers list"),
    ],
)
def test_a_damaged_keys_list_is_named(
    tmp_path: Path, listing: Any, bad_entry: str, what: str
) -> None:
    """Both lists under keys/ read through ``files.read_json_map``: a wrong entry and
    a file that is not JSON each name the file and what it should be."""
    keys = tmp_path / KEYS_DIR
    keys.mkdir()
    (keys / listing.FILE).write_text(bad_entry)
    with pytest.raises(sp.UserError, match=rf"{listing.FILE} is not a {what}"):
        listing.load(keys)
    (keys / listing.FILE).write_text("{not json")
    with pytest.raises(sp.UserError, match=rf"{listing.FILE} is not a {what} .*\("):
        listing.load(keys)


async def test_a_restarted_server_keeps_the_revocations(tmp_path: Path) -> None:
    state = tmp_path / "state"
    load_or_create(state)
    made = minting.create(state, "caller", app=None, name="restarted", out=None)
    minting.revoke(state, "restarted")
    identities = load_or_create(state)  # what `up` does at every start
    account = next(
        token
        for token in identities.auth.account_jwts.values()
        if jwt.claims_of(token)["name"] == LATTICE_ACCOUNT
    )
    assert made.public_key in jwt.claims_of(account)["nats"]["revocations"]
    server = EmbeddedServer(state / "nats", port=-1, auth=identities.auth)
    url = await server.start()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                url, user_credentials=made.path, allow_reconnect=False, connect_timeout=2
            )
        nc = await nats.connect(url, user_credentials=str(identities.creds("admin")))
        await nc.close()
    finally:
        server.stop()


def test_creds_revoke_beside_a_running_up_and_after_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()

    def up() -> None:
        started = superpose_cli(
            *("up", "--detach", "--workers", "0", "--gateway-port", str(free_port())), home=home
        )
        assert started.returncode == 0, started.stderr

    def status_as(creds: str) -> Any:
        return superpose_cli("status", "--creds", creds, home=home)

    up()
    try:
        made = superpose_cli("creds", "create", "--role", "viewer", "--name", "v1", home=home)
        assert made.returncode == 0, made.stderr
        creds = made.stdout.strip()
        assert status_as(creds).returncode == 0
        gone = superpose_cli("creds", "revoke", "v1", home=home)
        assert gone.returncode == 0, gone.stderr
        assert "user v1 revoked (key U" in gone.stdout
        assert "refuses it now and closed its connections" in gone.stdout
        after = status_as(creds)
        assert after.returncode == 1 and "Authorization Violation" in after.stderr
        again = superpose_cli("creds", "revoke", "v1", home=home)
        assert again.returncode == 0, again.stderr
        unknown = superpose_cli("creds", "revoke", "nobody", home=home)
        assert unknown.returncode == 1
        assert "no user named 'nobody' was minted" in unknown.stderr
        assert "Traceback" not in unknown.stderr
        listed = json.loads(superpose_cli("creds", "ls", "--json", home=home, check=True).stdout)
        assert [(row["name"], bool(row["revoked"])) for row in listed] == [("v1", True)]
        table = superpose_cli("creds", "ls", home=home, check=True).stdout
        assert "REVOKED" in table.splitlines()[0]
        assert superpose_cli("status", home=home).returncode == 0  # admin unaffected
        # A node's creds: the running lattice learns its signer before `create` returns,
        # so its executors' users connect at once.
        out = tmp_path / "node"
        out.mkdir()
        node = superpose_cli(
            *("creds", "create", "--role", "node", "--name", "w1", "--out", str(out)), home=home
        )
        assert node.returncode == 0, node.stderr
        signer = executor_identity.signer_beside(out / "w1.creds")
        assert signer is not None
        url = _url(home)
        executor = signer.mint(executor_identity.new_executor_id())
        assert refused(url, creds_text=executor) == ""
        assert superpose_cli("creds", "revoke", "w1", home=home).returncode == 0
        assert "Authorization Violation" in refused(url, creds_text=executor)
    finally:
        superpose_cli("down", home=home, check=True)
    up()  # the next `up` signs the account with every revocation
    try:
        later = status_as(creds)
        assert later.returncode == 1 and "Authorization Violation" in later.stderr
        assert "Authorization Violation" in refused(_url(home), creds_text=executor)
    finally:
        superpose_cli("down", home=home, check=True)


def _url(home: Path) -> str:
    return str(json.loads((home / "lattice.json").read_text())["lattice"])
