"""A node that is not root confines its executors too (issue 15, item 4): with
``bwrap`` in a user namespace (rootless), user code keeps the node's uid but sees none
of the node's files (its state folder and credentials), no process but its own calls',
and no process of a call survives it. The node here runs as ``nobody``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandbox_fns as sfns
from conftest import Lattice, client_on, poll, start_lattice, stop_lattice
from superpose.node import sandbox

NOBODY = 65534
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
"""The node runs as nobody on the system's interpreter of this version, with this
venv's packages: the venv's own interpreter may live where nobody may not go (pyenv's,
under /root), and a node's interpreter must be one its user can reach."""


def _rootless_works_as_nobody() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("bwrap") is None:
        return False
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    probe = [*sandbox.as_user(NOBODY), "bwrap", *sandbox.ROOTLESS_FLAGS]
    probe += ["--ro-bind", "/", "/", "--proc", "/proc", "true"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


pytestmark = pytest.mark.skipif(
    not _rootless_works_as_nobody(),
    reason="needs root (to start a node as nobody), setpriv, bubblewrap and user namespaces",
)


@pytest.fixture(scope="module")
def rootless_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lattice, Path]]:
    """A lattice of no nodes of its own, and one node started as nobody."""
    handle = start_lattice(tmp_path_factory.mktemp("rootless"), workers=0, gateway=False)
    home = Path(tempfile.mkdtemp(prefix="sp-rootless-"))  # not pytest's 0700 folders
    worker: subprocess.Popen[bytes] | None = None
    try:
        node_creds = handle.lattice.admin_creds.with_name("node.creds")
        for source in (node_creds, node_creds.with_name("executor-signer.nk")):
            if source.exists():
                shutil.copy(source, home / source.name)
                (home / source.name).chmod(0o600)
        for path in [home, *home.iterdir()]:
            os.chown(path, NOBODY, NOBODY)
        home.chmod(0o700)
        log = open(home / "worker.log", "wb")  # noqa: SIM115 - the worker writes it
        worker = subprocess.Popen(
            [
                *sandbox.as_user(NOBODY),
                *(SYSTEM_PYTHON, "-m", "superpose", "worker", "--lattice", handle.url),
                *("--creds", str(home / "node.creds"), "--state-dir", str(home / "node")),
                *("--slots", "1", "--sandbox", "bwrap"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(home), "SUPERPOSE_HOME": str(home)}
            | {"PYTHONPATH": os.pathsep.join(_packages())},
        )
        log.close()
        yield handle, home
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        stop_lattice(handle)
        shutil.rmtree(home, ignore_errors=True)


def _packages() -> list[str]:
    """This venv's packages and superpose's source folder, for another interpreter."""
    import superpose

    found = [p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)]
    return [str(Path(superpose.__file__).parents[1]), *found]


def _sleeps(tag: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", tag.encode()]:
            found.append(int(pid))
    return found


def test_user_code_of_a_rootless_node_sees_none_of_its_files(
    rootless_node: tuple[Lattice, Path],
) -> None:
    handle, home = rootless_node
    with client_on(handle):
        me = sfns.identity.with_options(retries=3).remote()
        assert me["uid"] == NOBODY  # the node's own uid: no other without root
        assert me["nproc"][0] != 512  # per uid, so the node's too: left alone
        assert me["tmp"] == "/tmp" and me["tmp_mode"] == 0o700
        assert me["env"]["SUPERPOSE_CREDS"] == "/tmp/lattice.creds"  # its own user's
        secrets = [str(home / "node.creds"), str(home / "executor-signer.nk")]
        view = sfns.looks_around.remote([*secrets, "/etc/passwd", SYSTEM_PYTHON])
        assert view["paths"] == {
            **dict.fromkeys(secrets, "FileNotFoundError"),
            "/etc/passwd": "FileNotFoundError",
            SYSTEM_PYTHON: "read",
        }
        assert len(view["pids"]) <= 3 and view["me"] < 10  # its pid namespace: no node


def test_no_process_of_a_call_outlives_it_on_a_rootless_node(
    rootless_node: tuple[Lattice, Path],
) -> None:
    handle, _ = rootless_node
    tag = "4242.5"
    with client_on(handle):
        started = sfns.leave_children.with_options(retries=3).remote(6, tag)
        assert len(started) == 6
        poll(lambda: not _sleeps(tag), "the call's sleeps to be gone", timeout=30)
        assert sfns.identity.remote()["uid"] == NOBODY  # and its node serves on
