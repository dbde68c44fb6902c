"""``superpose up --detach`` leaves its lattice running without leaving the command a
process object to the garbage collector (a ResourceWarning under ``-X dev``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from superpose.local.embedded import free_port


def test_up_detach_under_dev_mode_warns_of_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    env["SUPERPOSE_HOME"] = str(tmp_path)

    def superpose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-X", "dev", "-m", "superpose", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )

    up = superpose("up", "--detach", "--workers", "0", "--gateway-port", str(free_port()))
    try:
        assert up.returncode == 0, up.stderr
        assert "ready in" in up.stdout
        assert "ResourceWarning" not in up.stderr, up.stderr
    finally:
        down = superpose("down")
    assert down.returncode == 0, down.stderr
