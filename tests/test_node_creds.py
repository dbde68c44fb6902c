"""``creds create --role node`` writes the executors' signer beside the node's creds, so
a remote worker given that folder mints a user per executor (issue 15, item 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import executor_perm_fns as fns
import superpose as sp
from conftest import Lattice, superpose_cli
from superpose.errors import BadRequestError
from superpose.security import executor_identity, jwt, minting
from superpose.security.creds import read_creds
from superpose.security.identities import load_or_create
from test_cli import unique
from test_placement import node_with


def test_node_creds_come_with_the_executor_signer(lattice: Lattice, tmp_path: Path) -> None:
    made = minting.create(lattice.state_dir, "node", app=None, name=unique("n"), out=tmp_path)
    assert Path(made.path) == tmp_path / f"{made.name}.creds"  # --out DIR names the file
    signer = tmp_path / executor_identity.SIGNER_FILE
    assert signer.stat().st_mode & 0o777 == 0o600
    found = executor_identity.signer_beside(Path(made.path))
    assert found is not None
    assert found.seed == (lattice.state_dir / "keys" / "executors.nk").read_text().strip()
    # A second node's creds in the same folder share the signer; a caller's get none.
    minting.create(lattice.state_dir, "node", app=None, name=unique("n"), out=tmp_path)
    other = tmp_path / "caller"
    other.mkdir()
    minting.create(lattice.state_dir, "caller", app=None, name=unique("c"), out=other)
    assert not (other / executor_identity.SIGNER_FILE).exists()


def test_another_lattices_signer_is_never_overwritten(lattice: Lattice, tmp_path: Path) -> None:
    (tmp_path / executor_identity.SIGNER_FILE).write_text("SAanother\n")
    name = unique("n")
    with pytest.raises(BadRequestError, match="holds another executor signer"):
        minting.create(lattice.state_dir, "node", app=None, name=name, out=tmp_path)
    assert not (tmp_path / f"{name}.creds").exists()  # nothing half-written
    assert name not in [m.name for m in minting.listing(lattice.state_dir)]


def test_a_worker_with_minted_node_creds_gives_executors_their_own_users(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    made = minting.create(lattice.state_dir, "node", app=None, name=unique("w"), out=tmp_path)
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
    assert signer.read_text() == (home / "creds" / executor_identity.SIGNER_FILE).read_text()
