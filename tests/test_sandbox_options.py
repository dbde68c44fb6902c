"""The sandbox's options and its refusals (node/sandbox.py), without a lattice."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from superpose import config
from superpose.errors import SettingError, UserError
from superpose.node import sandbox
from superpose.node.config import NodeConfig
from superpose.support.readonly import seal


def test_a_bad_mode_is_refused_naming_it() -> None:
    with pytest.raises(UserError, match=r"'jail'.*none, user, bwrap"):
        sandbox.effective_mode("jail")
    with pytest.raises(SettingError, match="SUPERPOSE_SANDBOX='jail'"):
        config.settings({"SUPERPOSE_SANDBOX": "jail"})
    with pytest.raises(ValueError, match="sandbox must be one of"):
        NodeConfig(lattice="nats://x:1", node_id="n1", state_dir=Path("/tmp"), sandbox="jail")


def test_the_command_line_refuses_a_bad_mode(tmp_path: Path) -> None:
    from conftest import superpose_cli

    result = superpose_cli("worker", "--sandbox", "jail", home=tmp_path)
    assert result.returncode != 0
    assert "invalid choice: 'jail'" in result.stderr


def test_the_default_is_user_for_root_rootless_bwrap_else_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SUPERPOSE_SANDBOX", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert sandbox.default_mode() == "user"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sandbox, "rootless_problem", lambda: "")
    assert sandbox.default_mode() == "bwrap"
    monkeypatch.setattr(sandbox, "rootless_problem", lambda: "no user namespaces")
    assert sandbox.default_mode() == "none"
    monkeypatch.setenv("SUPERPOSE_SANDBOX", "bwrap")
    assert sandbox.default_mode() == "bwrap"


def test_a_node_that_is_not_root_says_why_it_cannot_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    mode, why = sandbox.effective_mode("user")
    assert mode == "none"
    assert "not root" in why and "runs as the node's user" in why and "--sandbox bwrap" in why
    assert sandbox.effective_mode("none") == ("none", "")
    monkeypatch.setattr(sandbox, "rootless_problem", lambda: "")
    assert sandbox.effective_mode("bwrap") == ("bwrap", "")
    monkeypatch.setattr(sandbox, "rootless_problem", lambda: "this kernel refuses it")
    mode, why = sandbox.effective_mode("bwrap")
    assert mode == "none" and "this kernel refuses it" in why and "node's user" in why


def test_rootless_problem_names_a_missing_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox.rootless_problem.cache_clear()
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    try:
        assert "bubblewrap is not installed" in sandbox.rootless_problem()
    finally:
        sandbox.rootless_problem.cache_clear()


def test_rootless_problem_names_a_refused_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bwrap that fails its probe (here: ``false`` stands in for it) is named."""
    sandbox.rootless_problem.cache_clear()
    monkeypatch.setattr(sandbox, "BWRAP_PROGRAM", "false")
    try:
        assert "refuses unprivileged user namespaces" in sandbox.rootless_problem()
    finally:
        sandbox.rootless_problem.cache_clear()


def test_a_rootless_executor_cannot_see_the_nodes_folders(tmp_path: Path) -> None:
    """Its uid is the node's, so file modes do not keep it out: a folder it is shown
    that holds the node's state is covered by an empty one, before the caches (which
    may lie inside it) are shown again."""
    shown = sandbox.python_paths()[-1]
    state = Path(shown) / "node-state"  # as if the state folder sat inside the venv
    identity = sandbox.rootless_identity(tmp_path / "tmp")
    assert identity.rootless and identity.uid == os.getuid()
    assert stat.S_IMODE(identity.tmp.stat().st_mode) == 0o700
    argv = sandbox.bwrap_argv(identity, tmp_path / "root", None, (state, Path("/elsewhere")))
    assert argv[:6] == [
        "bwrap", "--die-with-parent", "--new-session", "--unshare-pid",
        "--unshare-user", "--disable-userns",
    ]  # fmt: skip
    tmpfs = argv.index("--tmpfs")
    assert argv[tmpfs + 1] == str(state) and argv.count("--tmpfs") == 1  # /elsewhere is unseen
    assert argv.index(shown) < tmpfs < argv.index(str(tmp_path / "root" / "bundles"))


def test_bwrap_without_bubblewrap_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None if name == "bwrap" else name)
    with pytest.raises(UserError, match="bubblewrap is not installed"):
        sandbox.effective_mode("bwrap")


def test_killing_all_processes_of_a_uid_is_only_for_sandbox_uids() -> None:
    for uid in (0, os.getuid(), sandbox.UID_BASE - 1, sandbox.UID_BASE + sandbox.UID_COUNT):
        with pytest.raises(ValueError, match="not a sandbox uid"):
            asyncio.run(sandbox.kill_all_of(uid))


def test_caches_out_of_reach_move_to_a_folder_of_their_own(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    state = closed / "node"
    assert sandbox.unreachable(state) is not None
    root, temporary = sandbox.executor_root(state, "n1")
    try:
        assert temporary and sandbox.unreachable(root / "bundles") is None
        assert stat.S_IMODE(root.stat().st_mode) == 0o711
    finally:
        root.rmdir()


def test_caches_within_reach_stay_in_the_state_folder() -> None:
    opened = Path(tempfile.mkdtemp())  # not pytest's: its folders are 0700
    opened.chmod(0o755)
    try:
        root, temporary = sandbox.executor_root(opened / "node", "n1")
        assert (root, temporary) == (opened / "node", False)
        assert stat.S_IMODE(root.stat().st_mode) == 0o711  # passable, not listable
    finally:
        shutil.rmtree(opened)


def test_sealed_folders_are_read_only_for_others(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "m.py").write_text("x = 1")
    (folder / "run.sh").write_text("#!/bin/sh")
    (folder / "run.sh").chmod(0o777)
    seal(folder)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}
    assert modes == {"bundle": 0o755, "pkg": 0o755, "m.py": 0o644, "run.sh": 0o755}


def test_up_passes_the_mode_to_its_nodes(tmp_path: Path) -> None:
    from superpose.local.lattice import LocalLattice
    from superpose.security.identities import load_or_create

    def node_argv(**options: str) -> list[str]:
        lattice = LocalLattice(state_dir=tmp_path, **options)
        lattice.identities = load_or_create(tmp_path)  # as start() makes them
        return lattice._node_child("n1", 1).argv

    argv = node_argv(sandbox="bwrap")
    assert argv[argv.index("--sandbox") + 1] == "bwrap"
    assert "--sandbox" not in node_argv()


def test_a_private_tmpdir_is_passed_over_for_a_folder_executors_can_enter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A benchmark's scratch folder as $TMPDIR (0700): the node's stand-in folder goes
    where executors of other users can reach it."""
    private = tmp_path / "scratch"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    chosen = sandbox.passable_temp()
    assert chosen != str(private)
    assert sandbox.unreachable(Path(chosen) / "x") is None
    root, temporary = sandbox.executor_root(private / "state", "ntest")
    try:
        assert temporary and root.parent == Path(chosen)
    finally:
        shutil.rmtree(root)
