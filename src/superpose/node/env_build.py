"""Building an environment from its lock with uv, and packing it for other nodes.

A build installs the lock's exact hashed pins (``--require-hashes --no-deps``: the lock
is the whole environment, nothing is resolved again) into a bare ``site-packages``
folder (``--target``) for the node's own interpreter, with bytecode compiled so the
first import on every node that pulls it is not slower than a warm one. uv's cache
makes a rebuild of known wheels cheap. The archive is that folder as a tar.gz.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tarfile
from pathlib import Path

from superpose import protocol
from superpose.code.environments import uv_binary
from superpose.node.env_cache import SITE_PACKAGES

BUILD_TIMEOUT_S = 1800.0
"""A build that takes longer is stuck (an index that stopped answering)."""
LAST_LINES = 15
"""Lines of the installer's output a failed build reports."""
COMPRESS_LEVEL = 1
"""gzip's fastest: a numpy environment packs in a fraction of the time level 9 takes,
for an archive about 10 % larger."""


class BuildFailed(Exception):
    """uv could not install the lock (a broken wheel, an sdist that does not compile)."""

    def __init__(self, reason: str, node: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        """uv's last lines."""
        self.node = node
        """Where it failed."""


async def build(env: protocol.Environment, staged: Path) -> None:
    """Install ``env`` into ``staged/site-packages``; ``BuildFailed`` with uv's last lines."""
    lock = staged / "requirements.txt"
    lock.write_text(env.requirements)
    command = [
        uv_binary(),
        "pip",
        "install",
        "--require-hashes",
        "--no-deps",
        "--compile-bytecode",
        "--python",
        sys.executable,
        "--target",
        str(staged / SITE_PACKAGES),
        "-r",
        str(lock),
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "UV_NO_PROGRESS": "1"},
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), BUILD_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BuildFailed(f"uv pip install took over {BUILD_TIMEOUT_S:.0f} s") from None
    finally:
        lock.unlink(missing_ok=True)
    if process.returncode != 0:
        raise BuildFailed(last_lines(output.decode(errors="replace")))


def last_lines(output: str, count: int = LAST_LINES) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:]) or "uv pip install failed and said nothing"


def summary(reason: str) -> str:
    """The one line of a failed build's output that says what failed (uv's ``error:``)."""
    lines = reason.strip().splitlines() or ["no output"]
    return next((line for line in lines if line.startswith("error")), lines[-1]).strip()


def pack(staged: Path) -> bytes:
    """The built site-packages as a tar.gz (blocking: run it off the event loop)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=COMPRESS_LEVEL) as archive:
        archive.add(staged / SITE_PACKAGES, arcname=SITE_PACKAGES)
    return buffer.getvalue()


def unpack(data: bytes, staged: Path) -> None:
    """Unpack an archive made by ``pack`` into ``staged`` (blocking). Members that would
    land outside it, links out of it, devices, are refused by tarfile's data filter."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(staged, filter="data")
