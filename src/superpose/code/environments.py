"""Environments as data: requirements resolved once, with uv, into a lock and its digest.

An environment is what a function imports besides its own code. It is resolved once
(at deploy, or at a script's first call) for the lattice's Python and platform into
exact, hashed pins, and that lock, with the Python and the platform, is its content
address (``protocol.env_digest``): the same requirements on the same lattice are the
same environment, one changed pin is another. Nodes build it from the lock alone
(``uv pip install --require-hashes``), so every node gets the same packages.

uv does the resolving and installing; superpose only calls it. uv's own settings
apply (``UV_INDEX_URL``, ``UV_FIND_LINKS``, ``UV_NO_INDEX``, ``UV_CACHE_DIR``, …):
that is how a lattice uses a mirror, or the tests a wheelhouse of their own.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time

from superpose import protocol
from superpose.errors import DeployError

RESOLVE_TIMEOUT_S = 300.0
"""A resolution that takes longer is stuck (an index that does not answer)."""
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def uv_binary() -> str:
    """The uv that came with superpose (the ``uv`` package ships its binary)."""
    from uv import find_uv_bin

    return str(find_uv_bin())


def this_python() -> str:
    """``3.11``: executors run the node's own Python, so environments are built for it."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def this_platform() -> str:
    """This machine as uv's ``--python-platform`` names it: which wheels fit here."""
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if sys.platform == "darwin":
        return f"{machine}-apple-darwin"
    libc, version = platform.libc_ver()
    if sys.platform.startswith("linux") and libc == "glibc" and version:
        major, minor = version.split(".")[:2]
        return f"{machine}-manylinux_{major}_{minor}"
    if sys.platform.startswith("linux"):
        return f"{machine}-unknown-linux-musl"
    return f"{machine}-{sys.platform}"


def resolve(declared: list[str], python: str, platform_tag: str) -> protocol.Environment:
    """Resolve ``declared`` (requirement lines) for ``python`` on ``platform_tag``.

    Raises ``DeployError`` carrying the resolver's own message (it names the package:
    no such package, conflicting pins, no wheel for the platform).
    """
    command = [
        uv_binary(),
        "pip",
        "compile",
        "-",
        "--python-version",
        python,
        "--python-platform",
        platform_tag,
        "--generate-hashes",
        "--no-header",
        "--no-annotate",
        "--quiet",
    ]
    try:
        done = subprocess.run(
            command,
            input="\n".join(declared) + "\n",
            capture_output=True,
            text=True,
            timeout=RESOLVE_TIMEOUT_S,
            env={**os.environ, "UV_NO_PROGRESS": "1"},
        )
    except subprocess.TimeoutExpired as exc:
        raise DeployError(
            f"resolving {', '.join(declared)} took over {RESOLVE_TIMEOUT_S:.0f} s "
            "(is the package index reachable?)"
        ) from exc
    if done.returncode != 0:
        reason = done.stderr.strip() or f"uv exited with code {done.returncode}"
        raise DeployError(f"cannot resolve {', '.join(declared)}: {reason}")
    lock = done.stdout
    return protocol.Environment(
        digest=protocol.env_digest(lock, python, platform_tag),
        python=python,
        platform=platform_tag,
        requirements=lock,
        packages=packages_in(lock),
        declared=list(declared),
        created=time.time(),
    )


def packages_in(lock: str) -> dict[str, str]:
    """Name → version of each pin in a lock."""
    return {name.lower(): version for name, version in _PIN.findall(lock)}
