"""aiohttp (imported by nats-py, never used by superpose) is deferred until first use."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    package = tmp_path / "aiohttp"
    package.mkdir()
    marker = tmp_path / "executed"
    (package / "__init__.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\nVALUE = 1\n"
    )
    (package / "sub.py").write_text("OTHER = 2\n")
    code = f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nMARKER = {str(marker)!r}\n"
    return subprocess.run(
        [sys.executable, "-c", code + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_importing_superpose_and_nats_does_not_run_aiohttp(tmp_path: Path) -> None:
    proc = _run(
        tmp_path,
        """
        import os
        import superpose.client  # imports nats-py, which imports aiohttp
        import aiohttp
        assert not os.path.exists(MARKER), "aiohttp ran at import"
        import aiohttp.sub  # a submodule imports as usual, still without running it
        assert aiohttp.sub.OTHER == 2
        assert not os.path.exists(MARKER), "a submodule import ran aiohttp"
        assert aiohttp.VALUE == 1  # first use runs it
        assert os.path.exists(MARKER)
        from aiohttp import VALUE
        assert VALUE == 1
        print("ok")
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_a_missing_attribute_of_a_deferred_module_is_an_attribute_error(tmp_path: Path) -> None:
    proc = _run(
        tmp_path,
        """
        import superpose
        import aiohttp
        try:
            aiohttp.NOT_THERE
        except AttributeError as exc:
            assert "NOT_THERE" in str(exc), exc
            print("ok")
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
