"""Signed code: deployer keys, signed registry records and manifests, and the attack of
issue 15 (raw NATS access uploads a bundle and moves ``latest`` to it) as a test."""

from __future__ import annotations

import asyncio
import json
import stat
import time
import uuid
from pathlib import Path

import pytest

import superpose as sp
from conftest import Lattice, poll, superpose_cli
from superpose import protocol
from superpose.code import bundle as bundles
from superpose.code import store
from superpose.errors import UntrustedError, UserError
from superpose.lattice import payload, signing
from superpose.lattice.connection import connect
from superpose.local.embedded import free_port
from test_cli import deploy, unique, write_app
from test_versions import refused

REAL = """
import superpose as sp


@sp.function
def answer() -> str:
    return "{value}"
"""


# --- keys ---------------------------------------------------------------------------


def test_a_key_file_is_private_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "alice.seed"
    signer = signing.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert signing.load(path) == signer
    assert signer.public_key.startswith("U") and len(signer.public_key) == 56
    with pytest.raises(UserError, match="already exists: a key is never overwritten"):
        signing.create(path)


def test_signatures_verify_only_for_their_statement_and_key() -> None:
    alice, bob = signing.Signer(signing.new_seed()), signing.Signer(signing.new_seed())
    sig = alice.sign(b"statement")
    assert signing.verify(alice.public_key, b"statement", sig)
    assert not signing.verify(alice.public_key, b"statement!", sig)
    assert not signing.verify(bob.public_key, b"statement", sig)
    assert not signing.verify("U" * 56, b"statement", sig)
    assert not signing.verify(alice.public_key, b"statement", "not base64 ~")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("UABC", "expected 56 characters starting with U"),
        ("A" * 56, "expected 56 characters starting with U"),
        ("U" + "1" * 55, "it is not base32"),
    ],
)
def test_a_malformed_public_key_is_refused_naming_it(text: str, why: str) -> None:
    with pytest.raises(UserError, match=why):
        signing.check_public_key(text)


def test_a_public_key_with_a_typo_fails_its_checksum() -> None:
    key = signing.Signer(signing.new_seed()).public_key
    typo = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    with pytest.raises(UserError, match="checksum is wrong"):
        signing.check_public_key(typo)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"hello", "is not a deployer key"),
        (b"", "is not a deployer key"),
    ],
)
def test_a_file_that_is_not_a_user_seed_is_refused(
    tmp_path: Path, content: bytes, why: str
) -> None:
    path = tmp_path / "bad.seed"
    path.write_bytes(content)
    with pytest.raises(UserError, match=why):
        signing.load(path)


def test_an_account_seed_is_not_a_deployer_key(tmp_path: Path) -> None:
    import nkeys  # type: ignore[import-untyped]

    path = tmp_path / "account.seed"
    path.write_bytes(nkeys.encode_seed(b"\1" * 32, nkeys.PREFIX_BYTE_ACCOUNT))
    with pytest.raises(UserError, match="another kind: expected a user seed"):
        signing.load(path)


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cannot read the deployer key .*nope.seed"):
        signing.load(tmp_path / "nope.seed")


def test_old_unsigned_alias_values_still_decode() -> None:
    record = protocol.AliasRecord.decode(b"ab" * 32)
    assert record.version == "ab" * 32 and record.signer == "" and record.sig == ""
    signed = protocol.AliasRecord(version="cd" * 32, time=1.0, signer="U", sig="s")
    assert protocol.AliasRecord.decode(signed.encode()) == signed
    with pytest.raises(protocol.ProtocolError, match="malformed AliasRecord"):
        protocol.AliasRecord.decode(b"{not json")


def test_a_signed_alias_is_bound_to_its_key() -> None:
    """A trusted move of ``stable`` copied to ``latest`` must not verify there."""
    signer = signing.Signer(signing.new_seed())
    record = protocol.AliasRecord(version="ab" * 32, time=1.0, signer=signer.public_key)
    record.sig = signer.sign(record.statement("shop", "stable"))
    assert signing.verify(signer.public_key, record.statement("shop", "stable"), record.sig)
    assert not signing.verify(signer.public_key, record.statement("shop", "latest"), record.sig)
    assert not signing.verify(signer.public_key, record.statement("other", "stable"), record.sig)


# --- the attack of issue 15 -------------------------------------------------------------


async def _attack(url: str, app: str, folder: Path, signer: signing.Signer | None) -> str:
    """What a process with raw NATS access can do: store its own bundle, register a
    version of it and move the app's ``latest`` there. Returns the attacker's digest."""
    nc = await connect(url, name="attacker")
    try:
        bundle = bundles.from_folder(folder)
        digest, _ = await store.upload(nc, bundle, signer=signer)
        kv = await nc.jetstream().key_value(protocol.REGISTRY_BUCKET)
        spec = {"module": "mod", "qualname": "answer", "options": {}}
        version = protocol.Version(
            app=app,
            digest=digest,
            created=time.time(),
            size=bundle.size,
            files=bundle.listing,
            functions={"answer": spec},
        )
        alias = protocol.AliasRecord(version=digest, time=time.time())
        if signer is not None:
            version.signer = alias.signer = signer.public_key
            version.sig = signer.sign(version.statement())
            alias.sig = signer.sign(alias.statement(app, "latest"))
        await kv.put(protocol.version_key(app, digest), version.as_json())
        value = alias.encode() if signer is not None else digest.encode()  # an old bare id
        await kv.put(protocol.alias_key(app, "latest"), value)
        return digest
    finally:
        await nc.close()


def _sees_move(client: sp.Client, app: str, digest: str) -> bool:
    async def seen() -> bool:
        registry = await client.registry()
        record = registry.alias_records.get(app, {}).get("latest")
        return record is not None and record.version == digest

    return bool(client.run(seen()))


def _untrusted(lattice: Lattice, app: str) -> list[dict[str, str]]:
    state = json.loads(superpose_cli("status", "--json", url=lattice.url, check=True).stdout)
    (entry,) = [a for a in state["apps"] if a["app"] == app]
    found: list[dict[str, str]] = entry["untrusted"]
    return found


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "untrusted-key"])
def test_an_alias_moved_without_a_trusted_key_is_not_followed(
    lattice: Lattice, client: sp.Client, tmp_path: Path, signed: bool
) -> None:
    app = unique("attacked")
    real = deploy(lattice, write_app(tmp_path / app, {"mod.py": REAL.format(value="real")}))
    answer = client.function(f"{app}.answer")
    assert answer.remote() == "real"

    attacker = signing.Signer(signing.new_seed()) if signed else None
    evil_folder = write_app(tmp_path / "evil", {"mod.py": REAL.format(value=f"evil {app}")})
    evil = asyncio.run(_attack(lattice.url, app, evil_folder, attacker))
    poll(lambda: _sees_move(client, app, evil), "the client's mirror to see the move")

    assert answer.remote() == "real"  # still the last validly signed target

    def refused_prefetch() -> bool:
        logs = lattice.state_dir.glob("logs/node-*.log")
        return any(f"bundle {evil[:12]} not prefetched" in p.read_text() for p in logs)

    poll(refused_prefetch, "a node to refuse to prefetch the untrusted alias target")
    assert list(lattice.state_dir.glob(f"nodes/*/bundles/{evil}")) == []
    assert [answer.remote() for _ in range(5)] == ["real"] * 5
    signer = attacker.public_key if attacker else "unsigned"
    reports = {r["record"]: r for r in _untrusted(lattice, app)}
    assert reports["alias latest"]["names"] == evil
    assert reports["alias latest"]["signer"] == signer
    assert reports["alias latest"]["following"] == real
    assert reports["version"]["names"] == evil and reports["version"]["signer"] == signer
    text = superpose_cli("status", url=lattice.url, check=True).stdout
    assert f"UNTRUSTED {app} alias latest → {evil[:12]}" in text
    assert f"not followed (still {real[:12]})" in text
    versions = superpose_cli("versions", app, url=lattice.url, check=True).stdout
    unsigned_or_not = "unsigned" if not signed else f"signed by untrusted key {signer}"
    assert f"not routed to: {unsigned_or_not}" in versions

    # A reader started after the move finds the last trusted value in the alias's history.
    fresh = superpose_cli("call", f"{app}.answer", url=lattice.url, check=True).stdout
    assert json.loads(fresh) == "real"
    # Naming the attacker's version outright is refused.
    with pytest.raises(UntrustedError, match=f"version {evil[:12]} of {app} is"):
        client.function(f"{app}.answer@{evil[:12]}").remote()


def test_an_app_whose_alias_no_trusted_key_ever_signed_is_refused(
    lattice: Lattice, tmp_path: Path
) -> None:
    app = unique("planted")
    folder = write_app(tmp_path / "evil", {"mod.py": REAL.format(value=f"evil {app}")})
    evil = asyncio.run(_attack(lattice.url, app, folder, None))
    message = refused(lattice, "call", f"{app}.answer")
    assert f"alias 'latest' of {app} names {evil[:12]}, unsigned, not by a trusted" in message
    assert "it is not followed" in message and f"superpose promote {app} VERSION" in message


def test_an_unsigned_canary_is_not_followed_and_rollback_skips_untrusted_values(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    app = unique("canaried")
    folder = tmp_path / app
    v1 = deploy(lattice, write_app(folder, {"mod.py": REAL.format(value="v1")}))
    v2 = deploy(lattice, write_app(folder, {"mod.py": REAL.format(value="v2")}))
    evil_folder = write_app(tmp_path / "evil", {"mod.py": REAL.format(value=f"evil {app}")})
    evil = asyncio.run(_attack(lattice.url, app, evil_folder, None))  # latest → evil, unsigned

    async def plant_canary() -> None:
        nc = await connect(lattice.url, name="attacker")
        try:
            kv = await nc.jetstream().key_value(protocol.REGISTRY_BUCKET)
            canary = protocol.Canary(version=evil, percent=100.0)
            await kv.put(protocol.canary_key(app), canary.as_json())
        finally:
            await nc.close()

    asyncio.run(plant_canary())
    answer = json.loads(superpose_cli("call", f"{app}.answer", url=lattice.url, check=True).stdout)
    assert answer == "v2"
    records = {r["record"] for r in _untrusted(lattice, app)}
    assert {"alias latest", "canary", "version"} <= records
    # History v1, v2, evil: callers follow v2, so rollback goes from v2 to v1, never to evil.
    moved = superpose_cli("rollback", app, url=lattice.url, check=True).stdout
    assert f"{v2[:12]} → {v1[:12]}" in moved
    answer = json.loads(superpose_cli("call", f"{app}.answer", url=lattice.url, check=True).stdout)
    assert answer == "v1"


def _bare_call(client: sp.Client, app: str, digest: str, env: str = "") -> protocol.Result:
    inv = protocol.Invocation(
        id=f"{uuid.uuid4().hex[:16]}1",
        app=app,
        fn="answer",
        digest=digest,
        module="mod",
        qualname="answer",
        args=protocol.Payload(
            protocol.CODEC_PICKLE, payload.encode_args((), {}, protocol.CODEC_PICKLE)
        ),
        deadline=time.time() + 60,
        env=env,
    )

    async def request() -> protocol.Result:
        subject = protocol.call_subject(app, "answer")
        reply = await client.nc.request(subject, inv.encode(), timeout=20)
        return protocol.Result.decode(reply.data)

    result: protocol.Result = client.run(request())
    return result


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "untrusted-key"])
def test_a_node_refuses_code_no_trusted_key_signed(
    lattice: Lattice, client: sp.Client, tmp_path: Path, signed: bool
) -> None:
    app = unique("rawcode")
    attacker = signing.Signer(signing.new_seed()) if signed else None
    folder = write_app(tmp_path / app, {"mod.py": REAL.format(value=f"evil {app}")})

    async def upload() -> str:
        nc = await connect(lattice.url, name="attacker")
        try:
            return (await store.upload(nc, bundles.from_folder(folder), signer=attacker))[0]
        finally:
            await nc.close()

    digest = asyncio.run(upload())
    result = _bare_call(client, app, digest)
    assert result.error is not None and result.value is None
    assert result.error.kind == protocol.ERR_PREPARE
    assert result.error.type == "UntrustedCode"
    why = "unsigned" if attacker is None else f"signed by an untrusted key {attacker.public_key}"
    assert f"its code (bundle {digest[:12]}) is {why}" in result.error.message
    assert "the node did not load it" in result.error.message
    fetched = list(lattice.state_dir.glob(f"nodes/*/bundles/{digest}"))
    assert fetched == []  # refused before a single file was fetched


def test_a_node_refuses_an_environment_record_that_does_not_hash_to_its_digest(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    """Environment records are create-only: whoever writes a digest first would choose
    what every node installs for it, unless the node checks the content."""
    app = unique("envplant")
    deploy(lattice, write_app(tmp_path / app, {"mod.py": REAL.format(value="real")}))
    digest = client.resolve(app, "answer").digest
    fake = uuid.uuid4().hex * 2
    record = protocol.Environment(
        digest=fake,
        python="3.11",
        platform="x86_64-manylinux_2_36",
        requirements="evil==1.0",
        packages={"evil": "1.0"},
        declared=["evil"],
        created=time.time(),
    )

    async def plant() -> None:
        nc = await connect(lattice.url, name="attacker")
        try:
            kv = await nc.jetstream().key_value(protocol.REGISTRY_BUCKET)
            await kv.put(protocol.env_key(fake), record.as_json())
        finally:
            await nc.close()

    asyncio.run(plant())
    result = _bare_call(client, app, digest, env=fake)
    assert result.error is not None and result.error.type == "EnvironmentTampered"
    assert f"environment {fake[:12]} does not hash to that digest" in result.error.message


# --- keys on the command line ------------------------------------------------------------


def test_a_second_deployer_needs_its_key_trusted(lattice: Lattice, tmp_path: Path) -> None:
    key = tmp_path / "bob.seed"
    created = superpose_cli("key", "create", str(key), check=True).stdout
    public = signing.load(key).public_key
    assert f"public key: {public}" in created
    app = unique("bob")
    folder = write_app(tmp_path / app, {"mod.py": REAL.format(value="bob's")})

    message = refused(lattice, "deploy", str(folder), "--key", str(key))
    assert f"your deployer key {public} is not trusted by the lattice" in message
    assert f"superpose key trust {public}" in message
    assert app not in superpose_cli("ls", url=lattice.url, check=True).stdout  # nothing written

    superpose_cli("key", "trust", public, "--name", "bob", url=lattice.url, check=True)
    listed = json.loads(superpose_cli("key", "ls", "--json", url=lattice.url, check=True).stdout)
    assert {"key": public, "name": "bob"}.items() <= next(
        row for row in listed if row["key"] == public
    ).items()
    version = deploy(lattice, folder, "--key", str(key))
    assert json.loads(superpose_cli("call", f"{app}.answer", url=lattice.url, check=True).stdout)
    rows = json.loads(superpose_cli("versions", app, "--json", url=lattice.url).stdout)
    assert rows["versions"][0]["version"] == version
    assert rows["versions"][0]["signer"] == public and rows["versions"][0]["trusted"]

    superpose_cli("key", "untrust", public, url=lattice.url, check=True)
    assert public not in superpose_cli("key", "ls", url=lattice.url, check=True).stdout
    message = refused(lattice, "call", f"{app}.answer")
    assert f"signed by an untrusted key {public}" in message


def test_key_commands_refuse_bad_input_naming_it(lattice: Lattice, tmp_path: Path) -> None:
    assert "is not a deployer public key" in refused(lattice, "key", "trust", "UNOPE")
    unknown = signing.Signer(signing.new_seed()).public_key
    assert f"{unknown} is not a trusted deployer key" in refused(lattice, "key", "untrust", unknown)
    key = tmp_path / "k.seed"
    key.write_text("garbage")
    folder = write_app(tmp_path / "whatever", {"mod.py": REAL.format(value="x")})
    assert f"{key} is not a deployer key" in refused(
        lattice, "deploy", str(folder), "--key", str(key)
    )
    proc = superpose_cli("key", "create", str(key))
    assert proc.returncode == 1 and "a key is never overwritten" in proc.stderr


def test_up_makes_the_home_key_private_and_trusts_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    up = superpose_cli(
        "up", "--detach", "--workers", "0", "--gateway-port", str(free_port()), home=home
    )
    try:
        assert up.returncode == 0, up.stderr
        key = home / "keys" / "deployer.seed"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
        public = signing.load(key).public_key
        listed = superpose_cli("key", "ls", home=home, check=True).stdout
        assert public in listed and str(home) in listed  # named after the home it is from
        assert signing.load(signing.user_key_file()).public_key in listed
    finally:
        superpose_cli("down", home=home)


def test_a_bundle_verdict_names_why_and_any_valid_trusted_signature_wins() -> None:
    from superpose.registry.trust import TrustedKeys

    alice, mallory = signing.Signer(signing.new_seed()), signing.Signer(signing.new_seed())
    keys = TrustedKeys(None)  # type: ignore[arg-type]  # verdicts read the mirror only
    keys.keys[alice.public_key] = protocol.TrustedKey(name="alice")
    digest = "ab" * 32

    def manifest(**signatures: str) -> protocol.BundleManifest:
        return protocol.BundleManifest(files={}, signatures=signatures)

    good = alice.sign(protocol.bundle_statement(digest, alice.public_key))
    evil = mallory.sign(protocol.bundle_statement(digest, mallory.public_key))
    assert keys.bundle_verdict(digest, manifest()).reason == "unsigned"
    forged = keys.bundle_verdict(digest, manifest(**{alice.public_key: evil}))
    assert forged.reason == f"bad signature by {alice.public_key}"
    untrusted = keys.bundle_verdict(digest, manifest(**{mallory.public_key: evil}))
    assert untrusted.reason == f"signed by an untrusted key {mallory.public_key}"
    both = manifest(**{mallory.public_key: evil, alice.public_key: good})
    assert keys.bundle_verdict(digest, both).ok
    assert not keys.bundle_verdict("cd" * 32, both).ok  # bound to its digest
