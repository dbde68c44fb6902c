"""The import surface: every public name resolves, whatever was imported before."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import superpose as sp


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


def test_the_command_line_does_not_import_the_client() -> None:
    probe = "import sys, superpose.cli.main; print('superpose.client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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
    assert config.max_executors_from_env(8) == 12
    monkeypatch.setenv(config.ENV_MAX_EXECUTORS, "0")
    with pytest.raises(ValueError, match="SUPERPOSE_MAX_EXECUTORS"):
        config.max_executors_from_env(8)
    monkeypatch.setenv(config.ENV_AFFINITY, "0")
    assert config.affinity_from_env() is False
