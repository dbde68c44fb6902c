"""Tenants (issue 15 item 5): a NATS account each, on a real lattice. One tenant's apps,
results, logs and stored objects are invisible to another; a cross-tenant lookup gets
the answer a name or id that was never made gets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

import superpose as sp
from conftest import Lattice, poll, start_lattice, stop_lattice, superpose_cli
from superpose import protocol
from superpose.errors import UserError
from superpose.lattice.connection import connect
from superpose.security import executor_identity, lookup, tenants
from superpose.security.identities import load_or_create

SHOP = """
import superpose as sp


@sp.function
def quote(item: str, word: str) -> str:
    print(f"quoting {item} {word}")
    return f"{item}: 3 {word}"


@sp.function
def who() -> dict:
    # the user this executor connects as: its own, signed by the tenant's key
    import os
    from pathlib import Path

    from superpose.security import creds, jwt

    claims = jwt.claims_of(creds.read_creds(Path(os.environ["SUPERPOSE_CREDS"]))[0])
    account = claims["nats"].get("issuer_account")
    return {"name": claims["name"], "iss": claims["iss"], "account": account}
"""


@dataclass
class Tenanted:
    handle: Lattice
    shop: Path
    workers: dict[str, subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def state_dir(self) -> Path:
        return self.handle.state_dir

    def cli(self, tenant: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        """``superpose ARGS --tenant TENANT`` beside the lattice (its state folder is the
        home); None: the lattice's own account, as before tenants."""
        extra = ("--tenant", tenant) if tenant else ()
        return superpose_cli(*args, *extra, url=self.url, home=self.state_dir)

    def status(self, tenant: str | None) -> dict[str, Any]:
        proc = self.cli(tenant, "status", "--json")
        assert proc.returncode == 0, proc.stderr
        found: dict[str, Any] = json.loads(proc.stdout)
        return found


def start_worker(handle: Lattice, tenant: str, tmp: Path) -> subprocess.Popen[bytes]:
    """``superpose worker --tenant NAME`` from the lattice's state folder, as a user would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    env.update(SUPERPOSE_HOME=str(handle.state_dir), SUPERPOSE_SANDBOX="none")
    with open(tmp / f"node-{tenant}.log", "wb") as log:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "superpose", "worker", "--lattice", handle.url),
                *("--tenant", tenant, "--labels", f"tenant={tenant}", "--slots", "1"),
                *("--state-dir", str(tmp / f"node-{tenant}"), "--drain-grace", "1"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            cwd=tmp,
        )


async def connects(url: str, creds: Path) -> bool:
    try:
        nc = await connect(url, name="test-tenant", creds=creds)
    except sp.LatticeError:
        return False
    await nc.close()
    return True


@pytest.fixture(scope="module")
def tenanted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenanted]:
    """A lattice with one node of its own account, tenants t1 and t2 added while it runs
    (each with one node), and an app ``shop`` deployed by t1 only."""
    tmp = tmp_path_factory.mktemp("tenants")
    handle = start_lattice(tmp / "state", workers=1, gateway=False)
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("t1", "t2"):
            tenant = tenants.create(handle.state_dir, name)
            handle.loop.call_soon_threadsafe(handle.lattice.reload_accounts)
            poll(lambda t=tenant: asyncio.run(connects(handle.url, t.creds())), f"{name} joins")
            workers[name] = start_worker(handle, name, tmp)
        shop = tmp / "apps" / "shop"
        shop.mkdir(parents=True)
        (shop / "shop.py").write_text(textwrap.dedent(SHOP))
        found = Tenanted(handle, shop, workers)
        for name in workers:
            poll(lambda n=name: found.status(n)["nodes"], f"the node of {name}")
        proc = found.cli("t1", "deploy", str(shop))
        assert proc.returncode == 0, proc.stderr
        yield found
    finally:
        for worker in workers.values():
            worker.terminate()
            worker.wait(timeout=30)
        stop_lattice(handle)


def test_tenant_names_are_checked(tmp_path: Path) -> None:
    for bad in ("", "T1", "1t", "a b", "a.b", "x" * 33, "../up"):
        with pytest.raises(UserError, match="is not a tenant name: 1 to 32 lowercase"):
            tenants.check_name(bad)
    for reserved in ("sp", "sys", "operator", "default"):
        with pytest.raises(UserError, match=f"'{reserved}' is reserved"):
            tenants.check_name(reserved)
    with pytest.raises(UserError, match=f"{tmp_path} holds no lattice"):
        tenants.create(tmp_path, "t1")
    load_or_create(tmp_path)
    tenants.create(tmp_path, "t1")
    with pytest.raises(UserError, match=f"a tenant named 't1' already exists in {tmp_path}"):
        tenants.create(tmp_path, "t1")
    assert tenants.names(tmp_path) == ["t1"]


def test_a_new_tenant_is_accepted_while_the_lattice_runs(tenanted: Tenanted) -> None:
    """The fixture made both while the lattice ran; its own account kept working."""
    assert set(tenants.names(tenanted.state_dir)) >= {"t1", "t2"}
    lattice_nodes = tenanted.status(None)["nodes"]
    assert len(lattice_nodes) == 1 and lattice_nodes[0]["labels"] == {}
    for name in ("t1", "t2"):
        nodes = tenanted.status(name)["nodes"]
        assert [n["labels"] for n in nodes] == [{"tenant": name}]


def test_an_unknown_tenant_is_named(tenanted: Tenanted) -> None:
    proc = tenanted.cli("nobody", "status")
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        f"error: no tenant named 'nobody' in {tenanted.state_dir} (tenants: t1, t2"
    ), proc.stderr
    bad = tenanted.cli("No Body", "status")
    assert bad.returncode == 1
    assert "error: 'No Body' is not a tenant name" in bad.stderr
    both = tenanted.cli("t1", "status", "--creds", str(tenanted.state_dir / "creds/admin.creds"))
    assert both.returncode == 1
    assert "error: give --tenant or --creds, not both" in both.stderr


def test_a_call_from_another_tenant_is_told_there_is_no_such_app(tenanted: Tenanted) -> None:
    mine = tenanted.cli("t1", "call", "shop.quote", '["tea", "pounds"]')
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout) == "tea: 3 pounds"
    theirs = tenanted.cli("t2", "call", "shop.quote", '["tea", "pounds"]')
    missing = tenanted.cli("t2", "call", "nothere.quote", '["tea", "pounds"]')
    assert theirs.returncode == missing.returncode == 1
    assert theirs.stderr == missing.stderr.replace("nothere", "shop"), theirs.stderr
    lattice = tenanted.cli(None, "call", "shop.quote", '["tea", "pounds"]')
    assert lattice.returncode == 1 and lattice.stderr == theirs.stderr


def test_status_shows_only_the_tenants_own_apps_and_nodes(tenanted: Tenanted) -> None:
    assert [a["app"] for a in tenanted.status("t1")["apps"]] == ["shop"]
    assert tenanted.status("t2")["apps"] == []
    assert "shop" not in [a["app"] for a in tenanted.status(None)["apps"]]


def test_a_result_id_of_another_tenant_is_unknown(tenanted: Tenanted) -> None:
    submitted = tenanted.cli("t1", "call", "shop.quote", '["jam", "pence"]', "--async")
    assert submitted.returncode == 0, submitted.stderr
    invocation_id = submitted.stdout.strip()
    mine = tenanted.cli("t1", "result", invocation_id, "--wait", "--timeout", "60")
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout) == "jam: 3 pence"
    theirs = tenanted.cli("t2", "result", invocation_id)
    unknown_id = f"shop.{uuid.uuid4().hex[:8]}"
    unknown = tenanted.cli("t2", "result", unknown_id)
    assert theirs.returncode == unknown.returncode == 3  # pending: no such result (yet)
    assert theirs.stderr == unknown.stderr.replace(unknown_id, invocation_id)


def test_logs_of_another_tenants_app_are_unknown(tenanted: Tenanted) -> None:
    word = uuid.uuid4().hex[:8]
    assert tenanted.cli("t1", "call", "shop.quote", json.dumps(["tea", word])).returncode == 0
    poll(lambda: word in tenanted.cli("t1", "logs", "shop").stdout, "t1's log line")
    theirs = tenanted.cli("t2", "logs", "shop")
    missing = tenanted.cli("t2", "logs", "nothere")
    assert word not in theirs.stdout + theirs.stderr
    assert theirs.returncode == missing.returncode == 1
    assert theirs.stderr == missing.stderr.replace("nothere", "shop"), theirs.stderr


async def test_a_tenant_listening_to_everything_hears_nothing_of_another(
    tenanted: Tenanted,
) -> None:
    heard: list[str] = []

    async def note(msg: Any) -> None:
        heard.append(f"{msg.subject} {msg.data!r} {msg.headers!r}")

    t2 = tenants.load(tenanted.state_dir, "t2")
    nc = await nats.connect(tenanted.url, user_credentials=str(t2.creds()))
    try:
        await nc.subscribe(">", cb=note)
        await nc.flush()
        word = uuid.uuid4().hex[:8]
        called = await asyncio.to_thread(
            tenanted.cli, "t1", "call", "shop.quote", json.dumps(["tea", word])
        )
        assert called.returncode == 0, called.stderr
        # The call is over, so all it sent has been routed: t2's own message after it
        # comes through the same server, and shows the subscription is listening.
        await nc.publish("control.done", b"")
        while not any(line.startswith("control.done") for line in heard):
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    assert not [line for line in heard if word in line or "shop" in line]


async def test_objects_of_another_tenant_cannot_be_read(tenanted: Tenanted) -> None:
    t1 = tenants.load(tenanted.state_dir, "t1")
    t2 = tenants.load(tenanted.state_dir, "t2")
    nc1 = await nats.connect(tenanted.url, user_credentials=str(t1.creds()))
    nc2 = await nats.connect(tenanted.url, user_credentials=str(t2.creds()))
    try:
        store1 = await nc1.jetstream().object_store(protocol.BUNDLES_BUCKET)
        names = [info.name for info in await store1.list()]
        assert names, "t1's bundle is stored"
        store2 = await nc2.jetstream().object_store(protocol.BUNDLES_BUCKET)
        for name in names:
            with pytest.raises(nats.js.errors.ObjectNotFoundError):
                await store2.get(name)
        registry2 = await nc2.jetstream().key_value(protocol.REGISTRY_BUCKET)
        with pytest.raises(nats.js.errors.NoKeysError):  # t2 deployed nothing: empty
            await registry2.keys()
    finally:
        await nc1.close()
        await nc2.close()


def test_sp_connect_as_a_tenant(tenanted: Tenanted) -> None:
    client = sp.connect(tenanted.url, tenant="t1", show_logs=False)
    try:
        assert client.tenant == "t1"
        quote = sp.use("shop").quote
        assert quote.remote("tea", "ounces") == "tea: 3 ounces"
    finally:
        client.close()


def test_a_tenants_executors_are_users_of_their_own(tenanted: Tenanted) -> None:
    """Narrowed as the lattice's own executors are: a user per executor, signed by the
    tenant account's scoped executor key, never the tenant's node user."""
    proc = tenanted.cli("t1", "call", "shop.who", "[]")
    assert proc.returncode == 0, proc.stderr
    who = json.loads(proc.stdout)
    account = tenants.load(tenanted.state_dir, "t1").account
    assert who["account"] == account and who["iss"] != account
    assert who["name"] != "t1-node" and len(who["name"]) == 16
    signer = tenanted.state_dir / "creds/t1" / executor_identity.SIGNER_FILE
    assert executor_identity.signer_beside(signer.with_name("node.creds")) is not None


def test_creds_are_found_by_tenant_name_and_role(
    tenanted: Tenanted, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tenanted.state_dir / "creds"
    assert lookup.find_creds(tenanted.url, tenant="t1", role="node") == creds / "t1/node.creds"
    monkeypatch.setenv("SUPERPOSE_TENANT", "t2")  # wins over SUPERPOSE_CREDS
    monkeypatch.setenv("SUPERPOSE_CREDS", str(creds / "admin.creds"))
    assert lookup.find_creds(tenanted.url) == creds / "t2/admin.creds"
    with pytest.raises(UserError, match="tenant 't2' has no credentials for the role 'nope'"):
        lookup.find_creds(tenanted.url, role="nope")
