"""``creds create --role node`` writes an executor signer of the node's own beside its
creds, so a remote worker given that folder mints a user per executor, and revoking the
node stops those users too (issue 15, item 2)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest

import executor_perm_fns as fns
import superpose as sp
from conftest import Lattice, poll, superpose_cli
from superpose.errors import BadRequestError, LatticeError
from superpose.security import executor_identity, jwt, minting, nkeys, node_signers
from superpose.security.creds import read_creds
from superpose.security.identities import load_or_create
from test_cli import unique
from test_placement import node_with
from test_revoke import refused


def executor_user(node_creds: Path) -> str:
    """Creds text of an executor user the node's signer mints (as its worker would)."""
    signer = executor_identity.signer_beside(node_creds)
    assert signer is not None
    return signer.mint(executor_identity.new_executor_id())


def connects(lattice: Lattice, creds_text: str) -> str:
    """ "" if a new connection with ``creds_text`` is accepted, else the refusal."""
    return refused(lattice.url, creds_text=creds_text)


def signer_known(lattice: Lattice, node_creds: Path) -> None:
    """Reload the running lattice's accounts and wait until they list the node's signer."""
    lattice.loop.call_soon_threadsafe(lattice.lattice.reload_accounts)
    probe = executor_user(node_creds)
    poll(lambda: connects(lattice, probe) == "", "the node's signer to be known")


def test_node_creds_come_with_the_executor_signer(lattice: Lattice, tmp_path: Path) -> None:
    made = minting.create(lattice.state_dir, "node", app=None, name=unique("n"), out=tmp_path)
    assert Path(made.path) == tmp_path / f"{made.name}.creds"  # --out DIR names the file
    signer = tmp_path / executor_identity.SIGNER_FILE
    assert signer.stat().st_mode & 0o777 == 0o600
    found = executor_identity.signer_beside(Path(made.path))
    assert found is not None  # the node's own, listed in the account, not the lattice's
    assert found.seed != (lattice.state_dir / "keys" / "executors.nk").read_text().strip()
    listed = node_signers.load(lattice.state_dir / "keys")
    assert listed[made.name] == nkeys.public_key(found.seed)
    # A second node's creds may not go in the same folder; a caller's get no signer.
    second = unique("n")
    with pytest.raises(BadRequestError, match="holds another node's executor signer"):
        minting.create(lattice.state_dir, "node", app=None, name=second, out=tmp_path)
    assert second not in node_signers.load(lattice.state_dir / "keys")
    other = tmp_path / "caller"
    other.mkdir()
    minting.create(lattice.state_dir, "caller", app=None, name=unique("c"), out=other)
    assert not (other / executor_identity.SIGNER_FILE).exists()


def test_another_lattices_signer_is_never_overwritten(lattice: Lattice, tmp_path: Path) -> None:
    (tmp_path / executor_identity.SIGNER_FILE).write_text("SAanother\n")
    name = unique("n")
    with pytest.raises(BadRequestError, match="holds another node's executor signer"):
        minting.create(lattice.state_dir, "node", app=None, name=name, out=tmp_path)
    assert not (tmp_path / f"{name}.creds").exists()  # nothing half-written
    assert name not in [m.name for m in minting.listing(lattice.state_dir)]


def test_a_worker_with_minted_node_creds_gives_executors_their_own_users(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    made = minting.create(lattice.state_dir, "node", app=None, name=unique("w"), out=tmp_path)
    signer_known(lattice, Path(made.path))  # what `creds create` waits for on a running up
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    env["SUPERPOSE_SANDBOX"] = "none"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "superpose", "worker", "--lattice", lattice.url),
                *("--creds", made.path, "--labels", "creds=minted", "--slots", "1"),
                *("--state-dir", str(tmp_path / "node"), "--drain-grace", "1"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
        )
    try:
        node_with(lattice, creds="minted")
        claims = fns.who_am_i.options(needs={"creds": "minted"}).remote()
        node_user = jwt.claims_of(read_creds(Path(made.path))[0])
        assert claims["name"] != node_user["name"] and len(claims["name"]) == 16
        assert claims["nats"]["issuer_account"] == node_user["iss"]  # a scoped user of SP
        assert claims["connected_with_it"]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert "no executor signer" not in log.read_text()


def test_creds_create_node_out_folder_on_the_command_line(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    out.mkdir()
    load_or_create(home)
    made = superpose_cli(
        "creds", "create", "--role", "node", "--name", "nb", "--out", str(out), home=home
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(out / "nb.creds")
    signer = out / executor_identity.SIGNER_FILE
    assert f"{signer} is beside it: copy both" in made.stderr
    seed = signer.read_text().strip()
    assert seed != (home / "creds" / executor_identity.SIGNER_FILE).read_text().strip()
    assert node_signers.load(home / "keys") == {"nb": nkeys.public_key(seed)}


def test_revoking_a_node_stops_the_executor_users_its_signer_made(
    lattice: Lattice, tmp_path: Path
) -> None:
    """A stolen worker's signer is worth nothing once the node is revoked: users it
    signed are disconnected and refused, new ones too; another node's keep working."""
    stolen, kept = tmp_path / "stolen", tmp_path / "kept"
    stolen.mkdir()
    kept.mkdir()
    gone = minting.create(lattice.state_dir, "node", app=None, name=unique("s"), out=stolen)
    other = minting.create(lattice.state_dir, "node", app=None, name=unique("k"), out=kept)
    signer_known(lattice, Path(gone.path))
    signer_known(lattice, Path(other.path))
    running = executor_user(Path(gone.path))

    async def hold() -> Any:
        # Not max_reconnect_attempts=0: nats-py reads 0 as "no limit", and an eviction
        # without an -ERR first left it reconnecting (refused) every 2 s, never closed.
        return await nats.connect(
            lattice.url, user_credentials=nats_creds(tmp_path, running), allow_reconnect=False
        )

    held = lattice.run(hold())
    try:
        minting.revoke(lattice.state_dir, gone.name)
        assert gone.name not in node_signers.load(lattice.state_dir / "keys")
        lattice.loop.call_soon_threadsafe(lattice.lattice.reload_accounts)
        poll(lambda: held.is_closed, "the revoked node's executor user to be disconnected")
        assert "Authorization Violation" in connects(lattice, executor_user(Path(gone.path)))
        assert connects(lattice, executor_user(Path(other.path))) == ""
    finally:
        if not held.is_closed:
            lattice.run(held.close())


def nats_creds(folder: Path, creds_text: str) -> str:
    path = folder / "held.creds"
    path.write_text(creds_text)
    path.chmod(0o600)
    return str(path)


def test_a_node_without_out_gets_a_folder_of_its_own(tmp_path: Path) -> None:
    """The lattice's own signer sits in creds/: a minted node's pair goes in a folder."""
    home = tmp_path / "home"
    load_or_create(home)
    first = minting.create(home, "node", app=None, name="na", out=None)
    second = minting.create(home, "node", app=None, name="nb", out=None)
    assert Path(first.path) == home / "creds" / "na" / "na.creds"
    assert Path(second.path) == home / "creds" / "nb" / "nb.creds"
    seeds = {
        (Path(m.path).parent / executor_identity.SIGNER_FILE).read_text() for m in (first, second)
    }
    assert len(seeds) == 2 and (home / "creds" / "na").stat().st_mode & 0o777 == 0o700


def test_a_reload_that_never_comes_is_named_after_the_wait(
    lattice: Lattice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `creds create --role node` (and `tenant create`) says when the running
    lattice never takes what was made: a signer it does not list is refused throughout."""
    from superpose.cli import tenants as tenants_cli

    monkeypatch.setattr(tenants_cli, "APPLIED_TIMEOUT_S", 0.3)
    account = nkeys.public_key((lattice.state_dir / "keys" / "SP.nk").read_text().strip())
    unknown = executor_identity.ExecutorSigner(nkeys.new_seed(nkeys.KeyKind.ACCOUNT), account)
    probe = unknown.mint(executor_identity.new_executor_id())
    made = "the node's creds were made"
    with pytest.raises(LatticeError, match=r"the node's creds were made, but .* within 0 s"):
        asyncio.run(tenants_cli.wait_accepted(lattice.url, made, creds_text=probe))
