"""Executors' own NATS users (issue 15, item 2): an executor may reply, log and make
nested calls as its app, and nothing else."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import executor_perm_fns as fns
import superpose as sp
from conftest import Lattice
from superpose import protocol
from superpose.errors import LatticeError, NotFoundError
from superpose.registry import asked
from superpose.security import executor_identity, jwt
from superpose.security.creds import read_creds
from superpose.security.identities import load_or_create


def test_an_executor_connects_as_a_short_lived_user_of_its_own(client: sp.Client) -> None:
    claims = fns.who_am_i.remote()
    account = jwt.claims_of(read_creds(client_creds(client))[0])["iss"]
    assert claims["nats"]["issuer_account"] == account
    assert claims["iss"] != account  # signed by the scoped key, not the account's own
    assert claims["nats"].get("pub") is None  # its permissions are the key's template
    assert 0 < claims["exp"] - time.time() <= executor_identity.EXPIRES_S
    assert len(claims["name"]) == 16
    assert claims["connected_with_it"]


def client_creds(client: sp.Client) -> Path:
    from superpose.security.lookup import find_creds

    found = find_creds(client.url)
    assert found is not None
    return found


DENIED = [
    "registry read",
    "registry watch",
    "another's result",
    "results in bulk",
    "bundle object",
    "bundle chunks",
    "blobs by sequence",
    "every blob",
    "durable objects by sequence",
    "every durable object",
    "subscribe >",
    "another client's replies",
    "node subject",
    "move an alias",
    "upload an environment",
    "fail an environment",
    "secrets bucket",
    "create a stream",
]


def test_what_an_executor_may_not_do_is_refused_by_the_server(
    client: sp.Client, lattice: Lattice
) -> None:
    other = fns.leaf.spawn(5)  # a durable result of this client's: not the executor's
    assert other.result() == 10
    node = next(iter(n.id for n in client.run(client.nodes()).live()))
    outcome = fns.attacks.remote(other.invocation_id, node, "executor_perm_fns", "0" * 64)
    assert {name: outcome[name] for name in DENIED} == dict.fromkeys(DENIED, "denied")


def test_an_executor_still_does_its_normal_work(client: sp.Client) -> None:
    assert fns.fan_out.remote(5) == {"sync": 2, "durable": 4, "mapped": [0, 2, 4, 6, 8]}


def test_the_template_names_no_subject_outside_the_executors_own(tmp_path: Path) -> None:
    """Its own client subjects carry its name; nothing lets it listen to everything."""
    template = executor_identity.template()
    assert ">" not in template["sub"]["allow"]
    assert f"_SP.{executor_identity.NAME_TEMPLATE}.>" in template["sub"]["allow"]
    assert protocol.node_control_subject("*") in template["pub"]["deny"]
    identities = load_or_create(tmp_path)
    account = next(
        jwt.claims_of(token)
        for token in identities.auth.account_jwts.values()
        if jwt.claims_of(token)["name"] == "SP"
    )
    (key,) = account["nats"]["signing_keys"]
    assert key["kind"] == "user_scope" and key["role"] == executor_identity.ROLE
    signer = tmp_path / "creds" / executor_identity.SIGNER_FILE
    assert signer.stat().st_mode & 0o777 == 0o600
    assert key["key"] == executor_identity.signer_beside(identities.creds("node")).public_key()


def test_no_signer_beside_the_node_creds_means_none(tmp_path: Path) -> None:
    identities = load_or_create(tmp_path / "state")
    alone = tmp_path / "elsewhere" / "node.creds"
    alone.parent.mkdir()
    alone.write_text(identities.creds("node").read_text())
    assert executor_identity.signer_beside(alone) is None


def test_a_damaged_signer_is_named(tmp_path: Path) -> None:
    identities = load_or_create(tmp_path)
    signer = tmp_path / "creds" / executor_identity.SIGNER_FILE
    signer.write_text("SAnot-a-seed\n")
    with pytest.raises(LatticeError, match=r"executor-signer\.nk"):
        executor_identity.signer_beside(identities.creds("node"))


def test_a_signer_of_the_wrong_kind_is_named(tmp_path: Path) -> None:
    identities = load_or_create(tmp_path)
    signer = tmp_path / "creds" / executor_identity.SIGNER_FILE
    user_seed = read_creds(identities.creds("node"))[1]
    signer.write_text(user_seed + "\n")
    with pytest.raises(LatticeError, match="wrong kind"):
        executor_identity.signer_beside(identities.creds("node"))


def test_a_name_called_from_an_executor_is_resolved_by_its_node(client: sp.Client) -> None:
    """Its user may not read the registry: a node answers with the registry's own error."""
    said = fns.by_name.remote("no_such_app.fn")
    assert said.startswith("NotFoundError: ") and "no_such_app" in said
    assert "cannot read the lattice's registry" in fns.read_registry.remote()


def test_an_answer_carries_the_registry_error_back() -> None:
    with pytest.raises(NotFoundError, match="gone"):
        asked.target_of(protocol.Resolved(error_kind="not_found", error="gone"))
    with pytest.raises(LatticeError, match="could not resolve the name: odd"):
        asked.target_of(protocol.Resolved(error_kind="surprise", error="odd"))
    with pytest.raises(protocol.ProtocolError, match="not a Resolved message"):
        protocol.Resolved.decode(b"\x01garbage")
