"""Folders other users may read but never change: what a node shares with executors."""

from __future__ import annotations

import os
from pathlib import Path


def seal(folder: Path) -> None:
    """Make ``folder`` and everything in it readable by all and writable by its owner
    only (folders 0755, files 0644, executable files 0755). A node's executors run as
    other users (docs/architecture.md, Sandbox): they may load a cached bundle or
    environment, but one app's code cannot rewrite another's. Links are left alone."""
    folder.chmod(0o755)
    for top, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(top, name), 0o755, follow_symlinks=False)
        for name in files:
            path = os.path.join(top, name)
            if os.path.islink(path):
                continue
            runnable = os.stat(path).st_mode & 0o100
            os.chmod(path, 0o755 if runnable else 0o644)
