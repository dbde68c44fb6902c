"""The import surface: every public name resolves, whatever was imported before."""

from __future__ import annotations

import importlib
import subprocess
import sys

import superpose as sp


def test_public_names_survive_submodule_imports() -> None:
    for module in ("superpose.client", "superpose.functions", "superpose.futures"):
        importlib.import_module(module)
    assert sp.function.__module__ == "superpose.functions" and callable(sp.function)
    for name in sp.__all__:
        assert getattr(sp, name) is not None


def test_the_command_line_does_not_import_the_client() -> None:
    probe = "import sys, superpose.cli; print('superpose.client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
