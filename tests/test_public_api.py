"""The import surface: every public name resolves, whatever was imported before."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import superpose as sp
from conftest import Lattice, lattice_env
from superpose import config
from superpose.local import state

NOTICE = "superpose: no lattice found"


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter, with no SUPERPOSE_ setting but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cwd,
        env={**clean, **env},
        check=True,
    )


def test_public_names_survive_submodule_imports() -> None:
    for module in (
        "superpose.client.client",
        "superpose.client.functions",
        "superpose.client.futures",
    ):
        importlib.import_module(module)
    assert sp.function.__module__ == "superpose.client.functions" and callable(sp.function)
    for name in sp.__all__:
        assert getattr(sp, name) is not None


def test_dir_lists_only_the_public_names() -> None:
    """Submodules imported by now (the client, the protocol, ...) are bound on the
    package by Python; a user looking with dir() or tab completion must not see them."""
    for module in ("superpose.public", "superpose.protocol", "superpose.cli.main"):
        importlib.import_module(module)
    assert sp.connect and sp.RemoteError  # served, and cached on the module
    assert dir(sp) == sorted(sp.__all__)
    assert {"public", "client", "protocol", "cli", "importlib"} <= set(vars(sp))


def test_the_command_line_does_not_import_the_client() -> None:
    """Commands that never talk to a lattice (down, up --detach, --help) must not pay for
    importing the client or nats-py: only the commands that use them import them."""
    probe = (
        "import sys, superpose.cli.main as cli; cli._parser(); "
        "print('superpose.client' in sys.modules, 'nats' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_use_names_another_app_and_refuses_bad_names() -> None:
    pricing = sp.use("pricing")
    assert repr(pricing.quote) == "<superpose function pricing.quote>"
    assert repr(pricing.function("my-fn")) == "<superpose function pricing.my-fn>"
    with pytest.raises(AttributeError):
        pricing.__wrapped__  # noqa: B018 (dunder lookups must not become functions)
    with pytest.raises(sp.SuperposeError, match="app name"):
        sp.use("no such app")
    with pytest.raises(sp.SuperposeError, match="not a function name"):
        pricing.function("a.b")


def test_node_settings_from_the_environment_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from superpose import config

    monkeypatch.setenv(config.ENV_MAX_EXECUTORS, "12")
    assert config.settings().max_executors == 12
    monkeypatch.setenv(config.ENV_AFFINITY, "0")
    assert config.settings().affinity is False
    monkeypatch.setenv(config.ENV_MAX_EXECUTORS, "0")
    with pytest.raises(ValueError, match="MAX_EXECUTORS='0': expected a whole number ≥ 1"):
        config.settings()


def test_every_setting_has_its_default_and_a_bad_one_is_one_user_error() -> None:
    from superpose import config
    from superpose.errors import SettingError, UserError

    found = config.settings({})
    assert (found.replicas, found.max_executors) == (1, 8)
    assert found.affinity and found.express
    assert found.lattice is None and found.home.name == ".superpose"
    with pytest.raises(SettingError, match="REPLICAS='6': expected a whole number from 1 to 5"):
        config.settings({config.ENV_REPLICAS: "6"})
    assert issubclass(SettingError, UserError)  # the CLI prints it as an error: line


def test_connect_says_once_that_it_started_a_private_lattice(tmp_path: Path) -> None:
    code = "import superpose as sp\nfor _ in range(2):\n    sp.connect(workers=0).close()\n"
    stderr = run_python(code, tmp_path).stderr
    (notice,) = [line for line in stderr.splitlines() if NOTICE in line]
    assert "SUPERPOSE_LATTICE unset" in notice
    assert f"no `superpose up` running in {tmp_path / '.superpose'}" in notice
    assert "started a private one for this process" in notice


def test_connect_to_a_lattice_it_was_given_says_nothing(lattice: Lattice, tmp_path: Path) -> None:
    creds = lattice_env(lattice.url)["SUPERPOSE_CREDS"]
    given = f"import superpose as sp\nsp.connect({lattice.url!r}, creds={creds!r}).close()\n"
    assert NOTICE not in run_python(given, tmp_path).stderr
    found = "import superpose as sp\nsp.connect().close()\n"
    assert NOTICE not in run_python(found, tmp_path, **lattice_env(lattice.url)).stderr
    home = tmp_path / ".superpose"
    with state.exclusive_home(home):  # as `superpose up` run in this folder leaves it
        config.state_file(home).write_text(json.dumps({"ready": True, "lattice": lattice.url}))
        (home / "creds").mkdir()  # the CLI and sp.connect() beside `up` use its admin creds
        shutil.copy(creds, home / "creds" / "admin.creds")
        assert NOTICE not in run_python(found, tmp_path).stderr


def test_options_is_with_options_under_its_older_name() -> None:
    """The README documents ``with_options`` (Modal's name); ``options`` stays for code
    written against it, as the very same method."""
    quote = sp.use("pricing").quote
    assert type(quote).options is type(quote).with_options
    assert (
        quote.options(timeout=5).options_.timeout
        == quote.with_options(timeout=5).options_.timeout
        == 5
    )
