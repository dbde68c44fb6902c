"""Lattice URLs: one server or a cluster's, comma-separated, at every entry point; a
malformed one is a clear error naming it (the parser is ``config.lattice_servers``)."""

from __future__ import annotations

import re

import pytest

import superpose as sp
from conftest import Lattice, lattice_env, superpose_cli
from superpose.config import ENV_LATTICE, lattice_servers, settings
from superpose.errors import BadRequestError, SettingError
from superpose.local.embedded import free_port

MALFORMED = [
    ("nats://127.0.0.1:14222,nats:", "'nats:'", "must start with nats://"),
    ("http://127.0.0.1:4222", "http://127.0.0.1:4222", "must start with nats://"),
    ("127.0.0.1:4222", "127.0.0.1:4222", "must start with nats://"),
    ("nats://127.0.0.1:port", "nats://127.0.0.1:port", "port is not a whole number"),
    ("nats://a:1,nats://b:99999", "'nats://b:99999'", "port is not a whole number"),
    ("nats://a:1,,nats://b:2", "nats://a:1,,nats://b:2", "a server is empty"),
    ("nats://a:1,", "nats://a:1,", "a server is empty"),
    ("nats://a:1, nats://b:2", "' nats://b:2'", "spaces are not allowed"),
    ("nats://:4222", "nats://:4222", "no host"),
]
"""(URL, what the error must quote, why)."""


def test_one_url_is_one_server() -> None:
    assert lattice_servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]


def test_commas_separate_a_clusters_servers() -> None:
    url = "nats://127.0.0.1:14222,tls://user:pw@b.example:4443,nats://[::1]:14224"
    assert lattice_servers(url) == url.split(",")


@pytest.mark.parametrize(("url", "quoted", "why"), MALFORMED)
def test_a_malformed_url_is_refused_naming_it(url: str, quoted: str, why: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        lattice_servers(url)
    assert repr(url) in caught.value.message
    assert quoted in caught.value.message
    assert why in caught.value.message


@pytest.mark.parametrize(("url", "quoted", "why"), MALFORMED[:4])
def test_a_malformed_environment_variable_is_a_setting_error(
    url: str, quoted: str, why: str
) -> None:
    with pytest.raises(SettingError) as caught:
        settings({ENV_LATTICE: url})
    assert caught.value.message.startswith(f"{ENV_LATTICE}={url!r}: ")
    assert quoted in caught.value.message
    assert why in caught.value.message


def test_the_environment_variable_keeps_a_clusters_url() -> None:
    url = "nats://127.0.0.1:14222,nats://127.0.0.1:14223"
    assert settings({ENV_LATTICE: url}).lattice == url


def test_connect_refuses_a_malformed_url_naming_it() -> None:
    with pytest.raises(BadRequestError, match=re.escape("'nats://127.0.0.1:x'")):
        sp.connect("nats://127.0.0.1:4222,nats://127.0.0.1:x")


def _one_error_line(command: str, *args: str, url: str | None = None) -> str:
    proc = superpose_cli(command, *args, url=url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["status", "worker", "gateway", "ls", "result"])
def test_every_command_refuses_a_malformed_flag_in_one_line(command: str) -> None:
    extra = ["someid"] if command == "result" else []
    line = _one_error_line(command, *extra, "--lattice", "nats://127.0.0.1:14222,nats:")
    assert "lattice URL 'nats://127.0.0.1:14222,nats:'" in line


def test_a_command_refuses_a_malformed_environment_variable_in_one_line() -> None:
    line = _one_error_line("status", url="nats://127.0.0.1:14222 ,nats://127.0.0.1:14223")
    assert f"{ENV_LATTICE}='nats://127.0.0.1:14222 ,nats://127.0.0.1:14223'" in line
    assert "spaces are not allowed" in line


def test_status_takes_several_servers_and_reaches_the_live_one(lattice: Lattice) -> None:
    """A server that is down is skipped: nats-py tries the others."""
    dead = f"nats://127.0.0.1:{free_port()}"
    for url in (f"{dead},{lattice.url}", f"{lattice.url},{dead}"):
        creds = lattice_env(lattice.url)["SUPERPOSE_CREDS"]
        proc = superpose_cli("status", "--lattice", url, "--creds", creds, check=True)
        assert "node(s)" in proc.stdout
        proc = superpose_cli("status", url=url, check=True)
        assert "node(s)" in proc.stdout
