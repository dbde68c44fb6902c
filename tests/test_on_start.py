"""``@sp.on_start`` (issue 14, item 4): a hook runs once per executor before its first
call; one that raises fails the call with kind ``prepare`` and spoils its executor."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import pytest

import hook_fail_fns
import hook_fns
import superpose as sp
from conftest import Lattice, superpose_cli
from superpose import protocol
from superpose.errors import BadRequestError


def hook_runs(folder: Path, name: str = "runs") -> list[list[str]]:
    path = folder / name
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_hooks_run_once_per_executor_before_its_first_call(
    client: sp.Client, tmp_path: Path
) -> None:
    env = {"HOOK_DIR": str(tmp_path)}
    predict = hook_fns.predict.with_options(env=env)
    apredict = hook_fns.apredict.with_options(env=env)
    answers = [predict.remote(i) for i in range(4)] + [apredict.remote(i) for i in range(2)]
    answers += sp.gather(*(predict.spawn(i) for i in range(4)))
    for answer in answers:  # both hooks ran before any call, sync or async
        assert answer["loaded"] == {"model": "weights", "pool": "open"}
    runs = hook_runs(tmp_path)
    per_executor = Counter((what, pid) for what, pid, _ in runs)
    assert set(per_executor.values()) == {1}, runs  # once per executor, never twice
    pids = {str(a["pid"]) for a in answers}
    assert pids <= {pid for _, pid, _ in runs}
    for pid in pids:
        assert ("sync", pid) in per_executor and ("async", pid) in per_executor
    assert all(Path(cwd).parent.name == "bundles" for _, _, cwd in runs)  # the bundle's folder


def test_a_failing_hook_fails_the_call_and_its_executor_is_replaced(
    client: sp.Client, tmp_path: Path
) -> None:
    query = hook_fail_fns.query.with_options(env={"HOOK_DIR": str(tmp_path)})
    failures = []
    for _ in range(2):
        with pytest.raises(sp.RemoteError) as caught:
            query.remote()
        failures.append(caught.value)
    for error in failures:
        assert error.kind == protocol.ERR_PREPARE and error.type == "StartHookFailed"
        assert error.remote_message == (
            "start-up hook hook_fail_fns.connect_db failed: ConnectionError: database unreachable"
        )
        assert "in connect_db" in error.traceback and "raise ConnectionError" in error.traceback
    ran_in = [pid for (pid,) in hook_runs(tmp_path, "hook")]
    assert len(ran_in) == 2 and len(set(ran_in)) == 2  # a fresh executor ran it again
    assert not (tmp_path / "calls").exists()  # no call ran where the hook had failed
    (tmp_path / "fixed").touch()
    pid = query.remote()
    assert str(pid) not in ran_in
    assert [p for (p,) in hook_runs(tmp_path, "calls")] == [str(pid)]


def test_a_failing_hook_fails_durable_calls_with_kind_prepare(
    client: sp.Client, tmp_path: Path
) -> None:
    query = hook_fail_fns.query.with_options(env={"HOOK_DIR": str(tmp_path)})
    with pytest.raises(sp.RemoteError, match=r"start-up hook hook_fail_fns\.connect_db") as caught:
        query.spawn().result(timeout=60)
    assert caught.value.kind == protocol.ERR_PREPARE
    assert not (tmp_path / "calls").exists()


APP = """
import os

import superpose as sp

STATE = {}


@sp.on_start
def warm() -> None:
    STATE["ready"] = os.getcwd()


@sp.on_start
def broken() -> None:
    if os.environ.get("BREAK") == "yes":
        raise RuntimeError("cannot load the model")


@sp.function
def ready() -> str:
    return STATE["ready"]


@sp.function(env={"BREAK": "yes"})
def fragile() -> str:
    return "ran"
"""


def test_hooks_in_a_deployed_app(lattice: Lattice, tmp_path: Path) -> None:
    app = f"hooks{uuid.uuid4().hex[:6]}"
    (tmp_path / app).mkdir()
    (tmp_path / app / "models.py").write_text(APP)
    assert superpose_cli("deploy", str(tmp_path / app), url=lattice.url).returncode == 0
    out = superpose_cli("call", f"{app}.ready", url=lattice.url, check=True)
    assert Path(json.loads(out.stdout)).parent.name == "bundles"
    failed = superpose_cli("call", f"{app}.fragile", url=lattice.url)
    assert failed.returncode == 1
    assert (
        "prepare: StartHookFailed: start-up hook models.broken failed: "
        "RuntimeError: cannot load the model"
    ) in failed.stderr


def test_bad_hooks_are_refused_where_they_are_declared() -> None:
    with pytest.raises(BadRequestError, match=r"must take no arguments \(it has x\)"):
        sp.on_start(lambda x: None)
    with pytest.raises(BadRequestError, match="without parentheses"):
        sp.on_start()  # type: ignore[call-arg]
    with pytest.raises(BadRequestError, match="needs a function"):
        sp.on_start(42)  # type: ignore[arg-type]
