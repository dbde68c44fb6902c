"""Secrets and settings (issue 14, item 6): ``superpose secret``, ``client.secrets``,
``@sp.function(secrets=[...], env={...})``, encrypted at rest, never shown."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

import secret_fns as sfns
import superpose as sp
from conftest import ROOT, Lattice, lattice_env, read_until_exit, superpose_cli
from superpose import protocol
from superpose.client.options import Options
from superpose.client.secrets import set_secret
from superpose.code.discover import functions_in_module
from superpose.code.settings import settings_of
from superpose.errors import BadRequestError, DeployError, LatticeError, NotFoundError
from superpose.lattice.connection import connect, ensure_assets
from superpose.lattice.secrets import read as read_secrets
from superpose.local.embedded import STORE_KEY_FILE, EmbeddedServer


def secret_cli(
    *args: str, url: str, stdin: str | None = None, tty: bool = False
) -> subprocess.CompletedProcess[str]:
    """``superpose secret ...`` with ``stdin`` piped in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    env.update(lattice_env(url))
    return subprocess.run(
        [sys.executable, "-m", "superpose", "secret", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def marker() -> str:
    return f"sk_live_{uuid.uuid4().hex}"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def files_holding(folder: Path, needle: str) -> list[str]:
    """Every file under ``folder`` whose bytes contain ``needle``."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            found.append(str(path.relative_to(folder)))
    return found


@pytest.fixture(scope="module")
def value(lattice: Lattice) -> str:
    """SP_TEST_KEY, set through the CLI from stdin, as a user would."""
    secret = marker()
    proc = secret_cli("set", sfns.SECRET, url=lattice.url, stdin=secret + "\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"secret {sfns.SECRET} set"
    return secret


# --- settings in the executor, and nowhere else ---------------------------------------------


def test_a_function_gets_its_secret_and_env(client: sp.Client, value: str) -> None:
    got = sfns.uses_secret.remote()
    assert got["sha"] == sha(value)  # the trailing newline of the piped value is not kept
    assert got["mode"] == "prod"


def test_settings_reach_no_other_function(client: sp.Client, value: str) -> None:
    with_secret = sfns.uses_secret.remote()
    for _ in range(3):  # whichever node and executor answer
        seen, pid = sfns.env_of.remote(sfns.SECRET)
        assert seen is None and pid != with_secret["pid"]
        assert sfns.env_of.remote("MODE")[0] is None
        assert sfns.async_env_of.remote(sfns.SECRET) is None
    mode, secret, pid = sfns.mode_dev.remote()
    assert (mode, secret) == ("dev", None) and pid != with_secret["pid"]


def test_with_options_settings_get_executors_of_their_own(client: sp.Client, value: str) -> None:
    staging = sfns.env_of.with_options(env={"MODE": "staging"})
    assert staging.remote("MODE")[0] == "staging"
    assert sfns.env_of.remote("MODE")[0] is None


def test_a_durable_call_gets_them_too(client: sp.Client, value: str) -> None:
    assert sfns.uses_secret.spawn().result(timeout=60)["sha"] == sha(value)


def test_executors_are_kept_by_settings_never_by_values() -> None:
    settings = settings_of(["B", "A"], {"MODE": "prod"})
    assert settings is not None and settings.secrets == ["A", "B"]
    key = protocol.host_key("d" * 64, settings=settings)
    assert key.startswith("d" * 64 + "-") and "prod" not in key
    assert protocol.host_key("d" * 64) == "d" * 64
    assert key == protocol.host_key("d" * 64, settings=settings_of(["A", "B"], {"MODE": "prod"}))
    assert key != protocol.host_key("d" * 64, settings=settings_of(["A", "B"], {"MODE": "dev"}))


def test_invocations_carry_settings_only_when_there_are_some() -> None:
    settings = protocol.ExecutorSettings(secrets=["STRIPE_KEY"], env={"MODE": "prod"})
    bare = protocol.Invocation("i", "a", "f", "d", "m", "f", protocol.Payload("json"), 1.0)
    assert b"settings" not in bare.encode()
    bare.settings = settings
    assert protocol.Invocation.decode(bare.encode()).settings == settings


# --- a missing secret ---------------------------------------------------------------------


def test_a_missing_secret_fails_before_the_function_runs(client: sp.Client, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    with pytest.raises(sp.RemoteError) as caught:
        sfns.needs_missing.remote(str(ran))
    error = caught.value
    assert error.kind == protocol.ERR_PREPARE
    expected = f"secret {sfns.MISSING} is not set (superpose secret set {sfns.MISSING})"
    assert error.remote_message == expected
    with pytest.raises(sp.RemoteError, match="is not set") as durable:
        sfns.needs_missing.spawn(str(ran)).result(timeout=60)
    assert durable.value.kind == protocol.ERR_PREPARE
    assert not ran.exists()


def test_a_secret_set_later_is_found_by_the_next_call(
    client: sp.Client, lattice: Lattice, tmp_path: Path
) -> None:
    late = sfns.needs_missing.with_options(secrets=["SP_TEST_SET_LATER"])
    with pytest.raises(sp.RemoteError, match="SP_TEST_SET_LATER is not set"):
        late.remote(str(tmp_path / "first"))
    client.secrets.set("SP_TEST_SET_LATER", "later")
    try:
        assert late.remote(str(tmp_path / "second")) == "ran"
    finally:
        client.secrets.rm("SP_TEST_SET_LATER")


# --- never shown ----------------------------------------------------------------------------


def test_a_value_appears_in_no_log_output_or_store(
    lattice: Lattice, client: sp.Client, value: str
) -> None:
    """After calls that use it, print every environment name, and fail: the value is in
    no file of the lattice's state folder (logs, bundles, and the JetStream store, which
    is encrypted) and in no output of the commands."""
    names = sfns.prints_env_keys.remote()
    assert sfns.SECRET in names
    with pytest.raises(ValueError, match="payment declined") as failed:
        sfns.fails_with_secret.remote()
    assert value not in str(failed.value) and value not in failed.value.traceback  # type: ignore[attr-defined]
    assert client.secrets.ls()
    outputs = [
        superpose_cli("status", url=lattice.url).stdout,
        superpose_cli("status", "--json", url=lattice.url).stdout,
        superpose_cli("logs", "secret_fns", url=lattice.url).stdout,
        secret_cli("ls", url=lattice.url).stdout,
        secret_cli("ls", "--json", url=lattice.url).stdout,
    ]
    assert "payment declined" in outputs[2] and "environment:" in outputs[2]
    for output in outputs:
        assert value not in output
    assert files_holding(lattice.state_dir, value) == []


def test_secret_ls_lists_names_and_when(lattice: Lattice, value: str) -> None:
    proc = secret_cli("ls", "--json", url=lattice.url)
    assert proc.returncode == 0, proc.stderr
    listed = {row["name"]: row["updated"] for row in json.loads(proc.stdout)}
    assert sfns.SECRET in listed and listed[sfns.SECRET] > 0
    table = secret_cli("ls", url=lattice.url).stdout
    assert table.startswith("NAME") and sfns.SECRET in table


def test_the_python_api_sets_lists_and_removes(client: sp.Client) -> None:
    client.secrets.set("SP_TEST_API", "one")
    client.secrets.set("SP_TEST_API", "two")  # replaced
    assert "SP_TEST_API" in [s.name for s in client.secrets.ls()]
    client.secrets.rm("SP_TEST_API")
    assert "SP_TEST_API" not in [s.name for s in client.secrets.ls()]
    with pytest.raises(NotFoundError, match="no secret named SP_TEST_API"):
        client.secrets.rm("SP_TEST_API")


def test_secret_rm_through_the_cli(lattice: Lattice) -> None:
    assert secret_cli("set", "SP_TEST_GONE", url=lattice.url, stdin="x").returncode == 0
    removed = secret_cli("rm", "SP_TEST_GONE", url=lattice.url)
    assert removed.returncode == 0 and removed.stdout.strip() == "secret SP_TEST_GONE removed"
    again = secret_cli("rm", "SP_TEST_GONE", url=lattice.url)
    assert again.returncode == 1 and "no secret named SP_TEST_GONE" in again.stderr


def test_the_prompt_does_not_echo_the_value(lattice: Lattice, client: sp.Client) -> None:
    """No stdin to read: a hidden prompt (getpass), on a terminal of its own."""
    import pty

    secret = marker()
    main, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "superpose", "secret", "set", "SP_TEST_PROMPTED"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**env, **lattice_env(lattice.url)},
        start_new_session=True,  # no controlling terminal: getpass reads the one given
        cwd=ROOT,
    )
    os.close(terminal)
    prompt = b""
    while b"not shown" not in prompt:  # typed before it, the value would be echoed
        prompt += os.read(main, 1024)
    os.write(main, secret.encode() + b"\n")
    seen = read_until_exit(main, proc)
    assert proc.returncode == 0, seen
    assert "secret SP_TEST_PROMPTED set" in seen and secret not in seen
    check = sfns.needs_missing.with_options(secrets=["SP_TEST_PROMPTED"])
    assert check.remote("/dev/null") == "ran"
    client.secrets.rm("SP_TEST_PROMPTED")


# --- encrypted at rest --------------------------------------------------------------------


def test_the_embedded_store_is_encrypted_with_a_key_kept_for_restarts(tmp_path: Path) -> None:
    """What someone with the store but not the key sees: no value. A restart (``up``
    again in the same folder) reads the store with the same key; without it, no start."""
    secret = marker()
    state = tmp_path / "nats"
    server = EmbeddedServer(state)

    async def set_then_read() -> str:
        nc = await connect(await server.start(), name="test-secrets")
        try:
            kv = (await ensure_assets(nc)).secrets
            await set_secret(kv, "SP_TEST_DISK", secret)
        finally:
            await nc.close()
        server.stop()
        nc = await connect(await server.restart(), name="test-secrets")
        try:
            return (await read_secrets((await ensure_assets(nc)).secrets, ["SP_TEST_DISK"]))[
                "SP_TEST_DISK"
            ]
        finally:
            await nc.close()
            server.stop()

    assert asyncio.run(set_then_read()) == secret
    assert files_holding(tmp_path, secret) == []
    key = state / STORE_KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert files_holding(tmp_path, key.read_text().strip()) == [f"nats/{STORE_KEY_FILE}"]
    key.rename(tmp_path / "elsewhere")
    with pytest.raises(LatticeError, match=r"is encrypted, and its key \(.*store.key\) is gone"):
        asyncio.run(server.start())
    assert server.process is None


# --- bad input -------------------------------------------------------------------------------


def test_a_value_on_the_command_line_is_refused(lattice: Lattice) -> None:
    proc = secret_cli("set", "SP_TEST_ARGV", "hunter2", url=lattice.url)
    assert proc.returncode == 1
    assert "never taken from the command line" in proc.stderr and "shell's history" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "name", ["lower_case", "1STARTS_WITH_DIGIT", "HAS-DASH", "X" * 129, "SUPERPOSE_LATTICE"]
)
def test_bad_secret_names_are_refused_naming_the_rule(lattice: Lattice, name: str) -> None:
    proc = secret_cli("set", name, url=lattice.url, stdin="value")
    assert proc.returncode == 1
    expected = "superpose's own settings" if name.startswith("SUPERPOSE_") else "capital letters"
    assert expected in proc.stderr


def test_an_empty_or_unsettable_value_is_refused(lattice: Lattice) -> None:
    empty = secret_cli("set", "SP_TEST_EMPTY", url=lattice.url, stdin="\n")
    assert empty.returncode == 1 and "is empty" in empty.stderr
    nul = secret_cli("set", "SP_TEST_NUL", url=lattice.url, stdin="a\0b")
    assert nul.returncode == 1 and "NUL" in nul.stderr


@pytest.mark.parametrize(
    ("secrets", "env", "message"),
    [
        ("STRIPE_KEY", None, "takes a list of secret names"),
        (["stripe"], None, "is not a secret name"),
        (None, ["MODE"], "takes a dict of names to strings"),
        (None, {"MODE": 1}, "env value of MODE must be a string"),
        (None, {"BAD-NAME": "x"}, "env name 'BAD-NAME' is not valid"),
        (None, {"SUPERPOSE_LATTICE": "x"}, "superpose's own settings"),
        (None, {"MODE": "a\0b"}, "NUL"),
        (["MODE"], {"MODE": "x"}, "MODE is both a secret and an env name"),
    ],
)
def test_bad_settings_are_refused_at_decoration(secrets: object, env: object, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        sp.function(secrets=secrets, env=env)(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(BadRequestError, match=message):
        Options(secrets=secrets, env=env)  # type: ignore[arg-type]


# --- deployed apps ---------------------------------------------------------------------------

SHOP = """
import hashlib
import os

import superpose as sp


@sp.function(secrets=["SP_TEST_KEY"], env={"MODE": "prod"})
def charge() -> dict:
    return {"sha": hashlib.sha256(os.environ["SP_TEST_KEY"].encode()).hexdigest(),
            "mode": os.environ["MODE"]}


@sp.function(secrets=["SP_TEST_NEVER_SET"])
def refund() -> str:
    return "ran"


@sp.function
def plain() -> list:
    return [os.environ.get("SP_TEST_KEY"), os.environ.get("MODE")]
"""


def test_deployed_functions_get_what_deploy_recorded(
    lattice: Lattice, value: str, tmp_path: Path
) -> None:
    app = f"shop{uuid.uuid4().hex[:6]}"
    (tmp_path / app).mkdir()
    (tmp_path / app / "shop.py").write_text(SHOP)
    deployed = superpose_cli("deploy", str(tmp_path / app), url=lattice.url)
    assert deployed.returncode == 0, deployed.stderr
    out = superpose_cli("call", f"{app}.charge", url=lattice.url, check=True)
    assert json.loads(out.stdout) == {"sha": sha(value), "mode": "prod"}
    assert json.loads(superpose_cli("call", f"{app}.plain", url=lattice.url).stdout) == [None, None]
    missing = superpose_cli("call", f"{app}.refund", url=lattice.url)
    assert missing.returncode == 1
    assert "prepare" in missing.stderr
    assert "secret SP_TEST_NEVER_SET is not set (superpose secret set SP_TEST_NEVER_SET)" in (
        missing.stderr
    )
    http = httpx.post(f"{lattice.gateway}/v1/call/{app}.refund", headers=lattice.auth, timeout=60)
    assert http.status_code == 424
    assert "SP_TEST_NEVER_SET is not set" in http.json()["error"]["message"]
    ok = httpx.post(f"{lattice.gateway}/v1/call/{app}.charge", headers=lattice.auth, timeout=60)
    assert ok.status_code == 200 and value not in ok.text


def test_deploy_records_settings_and_refuses_bad_or_non_literal_ones() -> None:
    found = functions_in_module(
        "shop.py",
        b"import superpose as sp\n@sp.function(secrets=['B', 'A'], env={'MODE': 'prod'})\n"
        b"def f(): pass\n",
    )
    assert found[0].options == {"secrets": ["A", "B"], "env": {"MODE": "prod"}}
    for source, message in [
        (b"@sp.function(secrets=NAMES)\ndef f(): pass\n", "secrets= must be written out"),
        (b"@sp.function(env=dict(A='1'))\ndef f(): pass\n", "env= must be written out"),
        (b"@sp.function(secrets=['lower'])\ndef f(): pass\n", "is not a secret name"),
        (b"@sp.function(env={'SUPERPOSE_X': '1'})\ndef f(): pass\n", "superpose's own"),
    ]:
        with pytest.raises(DeployError, match=message) as caught:
            functions_in_module("shop.py", b"import superpose as sp\n" + source)
        assert caught.value.message.startswith("shop.py:2: ")
