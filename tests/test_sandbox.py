"""Sandboxed executors (node/sandbox.py): user code runs as a user of its own, cannot
change what other apps' executors load, and leaves no process behind."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandbox_fns
import sandbox_victim
import superpose as sp
from conftest import Lattice, client_on, poll, start_lattice, stop_lattice, superpose_cli
from superpose import protocol
from superpose.node import sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root can switch users")


@pytest.fixture(scope="module")
def user_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    handle = start_lattice(
        tmp_path_factory.mktemp("sandboxed"),
        workers=1,
        gateway=False,
        env={"SUPERPOSE_SANDBOX": "user", "NODE_SECRET": "do-not-leak"},
    )
    yield handle
    stop_lattice(handle)


def _sleeps(tag: str) -> list[int]:
    """Processes running ``sleep <tag>`` now (the ones a test's call started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[:2] == [b"sleep", tag.encode()]:
                found.append(int(entry.name))
    return found


def _tag() -> str:
    return f"{600 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"


def test_user_code_runs_as_a_user_of_its_own(user_node: Lattice) -> None:
    with client_on(user_node):
        me = sandbox_fns.identity.remote()
    uid = me["uid"]
    assert sandbox.UID_BASE <= uid < sandbox.UID_BASE + sandbox.UID_COUNT
    assert me["euid"] == uid and me["gid"] == uid and me["groups"] in ([], [uid])
    assert me["sid"] == me["pid"] == me["pgid"]  # a session and process group of its own
    assert me["nofile"][1] == sandbox_limits("RLIMIT_NOFILE")
    assert me["nproc"][1] == sandbox_limits("RLIMIT_NPROC")
    assert me["fsize"][1] == sandbox_limits("RLIMIT_FSIZE")
    assert me["tmp_mode"] == 0o700 and me["tmp_owner"] == uid
    assert me["env"]["HOME"] == me["tmp"]
    assert "NODE_SECRET" not in me["env"]  # the node's environment stays the node's
    assert not any(k.startswith("SUPERPOSE_HOME") for k in me["env"])


def sandbox_limits(name: str) -> int:
    import resource

    from superpose.node.executor.confine import LIMITS

    return LIMITS[getattr(resource, name)]


def test_its_private_folder_is_writable_and_removed_with_the_executor(
    user_node: Lattice,
) -> None:
    with client_on(user_node):
        assert sandbox_fns.write_tmp.remote("hello") == "hello"
        tmp = Path(sandbox_fns.identity.remote()["tmp"])
        assert (tmp / "note.txt").exists()
        with pytest.raises(sp.RemoteError) as info:
            sandbox_fns.crash.remote()
        assert info.value.kind == protocol.ERR_CRASHED
        poll(lambda: not tmp.exists(), f"{tmp} removed after its executor died")


def test_one_app_cannot_rewrite_another_apps_cached_code(user_node: Lattice) -> None:
    with client_on(user_node):
        assert sandbox_victim.answer.remote() == 42  # its bundle is now cached on the node
        outcomes = sandbox_fns.overwrite_cached.remote("sandbox_victim.py", "def answer(): 1")
        assert outcomes, "the attack found the other app's cached module"
        assert all(o.endswith("PermissionError") for o in outcomes), outcomes
        with pytest.raises(sp.RemoteError) as info:  # nor can it crash its own way there
            sandbox_fns.read_file.remote(str(user_node.state_dir / "nodes"))
        assert info.value.type in ("PermissionError", "IsADirectoryError")
        for _ in range(6):
            assert sandbox_victim.answer.remote() == 42


def test_no_child_survives_a_normal_return(user_node: Lattice) -> None:
    tag = _tag()
    with client_on(user_node):
        pids = sandbox_fns.leave_children.remote(50, tag)
    assert len(pids) == 50
    poll(lambda: not _sleeps(tag), "the 50 children of a returned call to be gone")


def test_no_child_survives_a_timeout(user_node: Lattice) -> None:
    tag = _tag()
    with client_on(user_node):
        future = sandbox_fns.children_then_hang.spawn(50, tag)
        poll(lambda: len(_sleeps(tag)) == 50, "the call's 50 children to start")
        with pytest.raises(sp.RemoteError) as info:
            future.result()
    assert info.value.kind == protocol.ERR_TIMEOUT
    poll(lambda: not _sleeps(tag), "the 50 children of a timed-out call to be gone")


def test_no_child_survives_a_memory_kill(user_node: Lattice) -> None:
    tag = _tag()
    with client_on(user_node), pytest.raises(sp.RemoteError) as info:
        sandbox_fns.children_then_hog.remote(50, tag)
    assert info.value.kind == protocol.ERR_MEMORY
    poll(lambda: not _sleeps(tag), "the 50 children of a memory-killed call to be gone")


@pytest.fixture(scope="module")
def bwrap_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    handle = start_lattice(
        tmp_path_factory.mktemp("bwrapped"),
        workers=1,
        gateway=False,
        env={"SUPERPOSE_SANDBOX": "bwrap", "NODE_SECRET": "do-not-leak"},
    )
    yield handle
    stop_lattice(handle)


def test_under_bwrap_it_sees_only_what_it_needs(bwrap_node: Lattice) -> None:
    tag = _tag()
    with client_on(bwrap_node):
        me = sandbox_fns.identity.remote()
        assert sandbox.UID_BASE <= me["uid"] < sandbox.UID_BASE + sandbox.UID_COUNT
        assert me["tmp"] == "/tmp" and sandbox_fns.write_tmp.remote("hi") == "hi"
        assert me["tmp_mode"] == 0o700 and me["tmp_owner"] == me["uid"]
        assert "NODE_SECRET" not in me["env"]
        assert me["pid"] < 10  # a pid namespace of its own: no other process to see
        for hidden in ("/etc/passwd", str(bwrap_node.state_dir / "nats")):
            with pytest.raises(sp.RemoteError) as info:
                sandbox_fns.read_file.remote(hidden)
            assert info.value.type in ("FileNotFoundError", "IsADirectoryError"), hidden
        assert sandbox_victim.answer.remote() == 42
        outcomes = sandbox_fns.overwrite_cached.remote("sandbox_victim.py", "def answer(): 1")
        assert outcomes and all(o.endswith(("PermissionError", "OSError")) for o in outcomes)
        assert sandbox_victim.answer.remote() == 42
        assert len(sandbox_fns.leave_children.remote(50, tag)) == 50
    poll(lambda: not _sleeps(tag), "the 50 children of a returned call to be gone")


def test_under_bwrap_a_memory_kill_leaves_nothing(bwrap_node: Lattice) -> None:
    tag = _tag()
    with client_on(bwrap_node), pytest.raises(sp.RemoteError) as info:
        sandbox_fns.children_then_hog.remote(50, tag)
    assert info.value.kind == protocol.ERR_MEMORY  # the executor's memory, not bwrap's
    poll(lambda: not _sleeps(tag), "the 50 children of a memory-killed call to be gone")


def test_status_says_how_a_node_confines_user_code(user_node: Lattice) -> None:
    shown = superpose_cli("status", url=user_node.url, check=True).stdout
    assert "sandbox=user" in shown
