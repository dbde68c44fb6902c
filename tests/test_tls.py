"""`up --listen` and `up --tls` as a user runs them, and clients that trust (or not)
the lattice's certificate; real nats-servers throughout."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import superpose as sp
from conftest import ROOT, poll, superpose_cli
from superpose import config
from superpose.client import session
from superpose.errors import LatticeError, SettingError, UserError
from superpose.local import tls
from superpose.local.lattice import free_port
from superpose.local.listen import Listen, check_free, parse_listen


@dataclass
class Up:
    home: Path
    url: str
    output: subprocess.CompletedProcess[str]


def launch(home: Path, *extra: str) -> Up:
    proc = superpose_cli(
        "up", "--workers", "1", "--detach", "--gateway-port", str(free_port()), *extra, home=home
    )
    assert proc.returncode == 0, proc.stderr
    state = json.loads((home / "lattice.json").read_text())
    return Up(home, state["lattice"], proc)


def cli(*args: str, home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`superpose ARGS` with ``env`` on top of a clean environment (no SUPERPOSE_*)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    return subprocess.run(
        [sys.executable, "-m", "superpose", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, config.ENV_HOME: str(home), **env},
        cwd=home,
    )


@pytest.fixture(scope="module")
def tls_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    handle = launch(tmp_path_factory.mktemp("tls-up"), "--tls")
    try:
        yield handle
    finally:
        superpose_cli("down", home=handle.home)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA of another lattice: not the one that signed ``tls_up``'s certificate."""
    ca = tls.generated(tmp_path_factory.mktemp("other"), []).ca_file
    assert ca is not None
    return ca


# --- up --tls -----------------------------------------------------------------------------


def test_up_tls_serves_a_call_end_to_end(tls_up: Up) -> None:
    assert tls_up.url.startswith("tls://127.0.0.1:")
    assert f"lattice  {tls_up.url}" in tls_up.output.stdout
    superpose_cli("deploy", str(ROOT / "examples" / "hello"), home=tls_up.home, check=True)
    proc = superpose_cli("call", "hello.greet", '["tls"]', home=tls_up.home, check=True)
    assert json.loads(proc.stdout) == "Hello, tls!"


def test_up_tls_keeps_its_keys_private(tls_up: Up) -> None:
    folder = tls_up.home / "tls"
    for key in ("ca-key.pem", "server-key.pem"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600, key
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    conf = (tls_up.home / "nats" / "nats.conf").read_text()
    assert f'cert_file: "{folder / "server.pem"}"' in conf


def test_a_python_client_calls_through_tls_with_the_ca(tls_up: Up) -> None:
    superpose_cli("deploy", str(ROOT / "examples" / "hello"), home=tls_up.home, check=True)
    # This process's home is not tls_up's, so only tls_ca= makes it trust the lattice.
    previous = session.default_client()
    client = sp.connect(
        tls_up.url,
        show_logs=False,
        tls_ca=tls_up.home / "tls" / "ca.pem",
        creds=tls_up.home / "creds" / "admin.creds",
    )
    try:
        assert client.function("hello.greet").remote("py") == "Hello, py!"
    finally:
        client.close()
        session.set_default(previous)


def test_a_client_given_the_wrong_ca_is_refused_naming_the_certificate_problem(
    tls_up: Up, other_ca: Path
) -> None:
    proc = cli(
        "status", "--lattice", tls_up.url, home=tls_up.home, env={"SUPERPOSE_TLS_CA": str(other_ca)}
    )
    assert proc.returncode == 1
    assert "TLS certificate of the lattice" in proc.stderr
    assert "unable to get local issuer certificate" in proc.stderr
    assert str(other_ca) in proc.stderr


def test_a_plain_nats_url_to_a_tls_lattice_says_it_requires_tls(tls_up: Up) -> None:
    plain = tls_up.url.replace("tls://", "nats://")
    proc = cli("status", "--lattice", plain, home=tls_up.home, env={})
    assert proc.returncode == 1
    assert f"the lattice at {plain} requires TLS" in proc.stderr


def test_a_worker_joins_a_tls_lattice_with_tls_ca(tls_up: Up, tmp_path: Path) -> None:
    ca = tls_up.home / "tls" / "ca.pem"
    worker = subprocess.Popen(
        [sys.executable, "-m", "superpose", "worker", "--lattice", tls_up.url,
         "--tls-ca", str(ca), "--labels", "joined=tls", "--state-dir", str(tmp_path / "n"),
         "--creds", str(tls_up.home / "creds" / "node.creds")],
        env={k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def joined() -> bool:
            status = superpose_cli("status", "--json", home=tls_up.home, check=True)
            nodes = json.loads(status.stdout)["nodes"]
            return any(n["labels"].get("joined") == "tls" for n in nodes)

        poll(joined, "the worker to join over TLS")
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_worker_with_a_missing_tls_ca_is_refused(tmp_path: Path) -> None:
    proc = cli(
        "worker", "--lattice", "tls://127.0.0.1:1", "--tls-ca", "nope.pem", home=tmp_path, env={}
    )
    assert proc.returncode == 1
    assert "--tls-ca nope.pem: no such file" in proc.stderr


def test_generated_certificates_are_reused_and_the_server_one_renewed_for_new_names(
    tmp_path: Path,
) -> None:
    first = tls.generated(tmp_path, [])
    assert first.ca_file is not None
    ca, server = first.ca_file.read_bytes(), first.cert_file.read_bytes()
    again = tls.generated(tmp_path, [])
    assert again.ca_file is not None
    assert (again.ca_file.read_bytes(), again.cert_file.read_bytes()) == (ca, server)
    renamed = tls.generated(tmp_path, ["lattice.example.org", "10.1.2.3"])
    assert renamed.ca_file is not None
    assert renamed.ca_file.read_bytes() == ca  # clients keep trusting it
    assert renamed.cert_file.read_bytes() != server


def test_own_certificate_files_are_checked(tmp_path: Path) -> None:
    made = tls.generated(tmp_path, [])
    with pytest.raises(UserError, match=r"--tls-cert .*missing\.pem: no such file"):
        tls.own(tmp_path / "missing.pem", made.key_file, None)
    with pytest.raises(UserError, match="not a PEM certificate and its private key"):
        tls.own(made.key_file, made.key_file, None)
    assert tls.own(made.cert_file, made.key_file, made.ca_file).ca_file == made.ca_file


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tls", "--tls-cert", "c.pem", "--tls-key", "k.pem"], "pick one"),
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-ca", "ca.pem"], "--tls-ca and --tls-name only go with --tls"),
    ],
)
def test_up_refuses_tls_options_that_do_not_fit(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    proc = superpose_cli("up", "--workers", "0", *extra, home=tmp_path)
    assert proc.returncode == 1
    assert message in proc.stderr


def test_tls_ca_setting_must_name_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(SettingError, match=f"{config.ENV_TLS_CA}='{missing}': no such file"):
        config.settings({config.ENV_TLS_CA: str(missing)})


# --- up --listen --------------------------------------------------------------------------


def test_listen_on_a_given_host_and_port(tmp_path: Path) -> None:
    port = free_port()
    handle = launch(tmp_path, "--listen", f"127.0.0.1:{port}")
    try:
        assert handle.url == f"nats://127.0.0.1:{port}"
        assert f"listen: 127.0.0.1:{port}" in (tmp_path / "nats" / "nats.conf").read_text()
        status = superpose_cli("status", "--json", home=tmp_path, check=True)
        assert len(json.loads(status.stdout)["nodes"]) == 1
        # A tls:// URL to a lattice without TLS is refused, not used in plaintext.
        proc = cli("status", "--lattice", f"tls://127.0.0.1:{port}", home=tmp_path, env={})
        assert proc.returncode == 1
        assert "does not use TLS, though the URL asks for it" in proc.stderr
    finally:
        superpose_cli("down", home=tmp_path)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("4222", "expected HOST:PORT"),
        (":4222", "expected HOST:PORT"),
        ("127.0.0.1:port", "the port must be a whole number"),
        ("127.0.0.1:70000", "the port must be a whole number from 0 to 65535"),
        ("bad host:4222", "'bad host' is not an IP address or host name"),
    ],
)
def test_a_malformed_listen_is_refused(tmp_path: Path, value: str, why: str) -> None:
    proc = superpose_cli("up", "--detach", "--listen", value, home=tmp_path)
    assert proc.returncode == 1
    assert f"--listen {value!r}: {why}" in proc.stderr
    assert not (tmp_path / "lattice.json").exists()


def test_listen_on_a_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = superpose_cli("up", "--detach", "--listen", f"127.0.0.1:{port}", home=tmp_path)
    assert proc.returncode == 1
    assert f"--listen) 127.0.0.1:{port}: the port is in use" in proc.stderr


def test_listen_and_lattice_port_together_are_refused(tmp_path: Path) -> None:
    proc = superpose_cli("up", "--listen", "127.0.0.1:0", "--lattice-port", "4222", home=tmp_path)
    assert proc.returncode == 1
    assert "--listen HOST:PORT or --lattice-port, not both" in proc.stderr


def test_listen_values_parse() -> None:
    assert parse_listen("0.0.0.0:4222", "--listen") == Listen("0.0.0.0", 4222)
    assert parse_listen("[::]:0", "--listen") == Listen("::", 0)
    assert parse_listen("lattice.example.org:4222", "--listen").host == "lattice.example.org"
    assert str(Listen("::1", 5)) == "[::1]:5"
    check_free(Listen("127.0.0.1", 0), "x")  # port 0 is always free


def test_a_connection_refused_by_tls_is_a_lattice_error(tls_up: Up, other_ca: Path) -> None:
    import asyncio

    from superpose.lattice.connection import connect

    with pytest.raises(LatticeError, match="TLS certificate of the lattice"):
        asyncio.run(connect(tls_up.url, name="test", tls_ca=other_ca))
