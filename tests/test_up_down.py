"""`superpose up`, `down` and `worker` as a user runs them, in private state folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ROOT, superpose_cli
from superpose.local.lattice import free_port

WAIT_S = 30.0


@dataclass
class Up:
    home: Path
    gateway_port: int
    output: subprocess.CompletedProcess[str]

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.home / "lattice.json").read_text())
        return state


def launch(home: Path, *extra: str) -> Up:
    port = free_port()
    proc = superpose_cli(
        "up", "--workers", "2", "--detach", "--gateway-port", str(port), *extra, home=home
    )
    return Up(home, port, proc)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    handle = launch(tmp_path_factory.mktemp("up"))
    try:
        yield handle
    finally:
        superpose_cli("down", home=handle.home)


def started(pid: int) -> int | None:
    """The process's start time, or None when it is gone.

    A zombie (exited, waiting for its parent to reap it) runs nothing: gone.
    The start time tells a process from a later one that got the same pid.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def alive(pid: int) -> bool:
    return started(pid) is not None


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    stack = [pid]
    while stack:
        parent = stack.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = {int(k) for k in children.read_text().split()}
            except OSError:
                continue
            stack.extend(kids - found)
            found |= kids
    return found


Snapshot = dict[int, int]
"""pid -> start time of the processes that must all be gone at the end."""


def snapshot(pids: set[int]) -> Snapshot:
    return {pid: start for pid in pids if (start := started(pid)) is not None}


def wait_all_gone(procs: Snapshot) -> None:
    deadline = time.monotonic() + WAIT_S
    while left := {pid for pid, start in procs.items() if started(pid) == start}:
        details = {pid: cmdline(pid) for pid in left}
        assert time.monotonic() < deadline, f"processes left behind: {details}"
        time.sleep(0.05)


def nodes(home: Path) -> list[dict[str, Any]]:
    proc = superpose_cli("status", "--json", home=home, check=True)
    found: list[dict[str, Any]] = json.loads(proc.stdout)["nodes"]
    return found


def every_process_of(handle: Up) -> Snapshot:
    state = handle.state()
    pids = {int(state["pid"]), *map(int, state["pids"].values())}
    for pid in list(pids):
        pids |= descendants(pid)
    return snapshot(pids)


# --- a running lattice --------------------------------------------------------------------


def test_up_detach_prints_where_the_lattice_is(up: Up) -> None:
    assert up.output.returncode == 0, up.output.stderr
    assert "lattice  nats://127.0.0.1:" in up.output.stdout
    assert f"gateway  http://127.0.0.1:{up.gateway_port}" in up.output.stdout
    state = up.state()
    assert state["ready"] is True
    assert state["gateway"] == f"http://127.0.0.1:{up.gateway_port}"
    assert {"gateway", "nats-server"} <= set(state["pids"])
    assert len(state["pids"]) == 4  # two nodes, the gateway, the server


def test_status_finds_the_lattice_from_superpose_home(up: Up) -> None:
    state = json.loads(superpose_cli("status", "--json", home=up.home, check=True).stdout)
    assert state["lattice"] == up.state()["lattice"]
    assert len(state["nodes"]) == 2
    text = superpose_cli("status", home=up.home, check=True).stdout
    assert "2 node(s)" in text


def test_the_lattice_serves_calls_and_http(up: Up) -> None:
    superpose_cli("deploy", str(ROOT / "examples" / "hello"), home=up.home, check=True)
    proc = superpose_cli("call", "hello.greet", '["up"]', home=up.home, check=True)
    assert json.loads(proc.stdout) == "Hello, up!"
    gateway = f"http://127.0.0.1:{up.gateway_port}"
    token = (up.home / "gateway.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    response = httpx.post(
        f"{gateway}/v1/call/hello.shout", json={"args": ["up"]}, headers=auth, timeout=60
    )
    assert response.json() == {"result": "UP!"}
    assert (up.home / "gateway.token").stat().st_mode & 0o777 == 0o600


def test_a_second_up_is_refused(up: Up) -> None:
    before = up.state()
    detached = superpose_cli("up", "--detach", "--gateway-port", str(free_port()), home=up.home)
    assert detached.returncode == 1
    assert "already running" in detached.stderr
    assert before["lattice"] in detached.stderr
    foreground = superpose_cli("up", "--gateway-port", str(free_port()), home=up.home)
    assert foreground.returncode == 1
    assert "already running" in foreground.stderr
    # the refused `up`s left the running lattice's state alone
    assert up.state() == before
    assert len(nodes(up.home)) == 2


def test_worker_joins_with_labels_and_slots_and_stops_on_sigterm(up: Up) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    env["SUPERPOSE_HOME"] = str(up.home)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "superpose",
            "worker",
            "--lattice",
            up.state()["lattice"],
            "--labels",
            "region=eu,gpu=1",
            "--slots",
            "3",
            "--drain-grace",
            "2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            labelled = [n for n in nodes(up.home) if n["labels"] == {"region": "eu", "gpu": "1"}]
            if labelled:
                break
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "the worker never showed up in status"
        (node,) = labelled
        assert node["slots"] == 3
        assert node["pid"] == worker.pid
        children = snapshot(descendants(worker.pid))
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=WAIT_S)
        assert worker.returncode == 0, stderr
        assert "Traceback" not in stderr
        wait_all_gone(children)
        assert node["id"] not in {n["id"] for n in nodes(up.home)}  # it said goodbye
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


def test_worker_with_bad_labels_is_refused(up: Up) -> None:
    proc = superpose_cli(
        "worker", "--lattice", up.state()["lattice"], "--labels", "region=eu,foo", home=up.home
    )
    assert proc.returncode == 1
    assert "'foo'" in proc.stderr and "KEY=VALUE" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- stopping -------------------------------------------------------------------------------


def test_down_when_nothing_runs(tmp_path: Path) -> None:
    proc = superpose_cli("down", home=tmp_path)
    assert proc.returncode == 0
    assert "no lattice is running" in proc.stdout


def test_down_leaves_no_process_behind_and_up_works_again(tmp_path: Path) -> None:
    first = launch(tmp_path)
    assert first.output.returncode == 0, first.output.stderr
    try:
        superpose_cli("deploy", str(ROOT / "examples" / "fanout"), home=tmp_path, check=True)
        total = superpose_cli("call", "fanout.total", "[20]", home=tmp_path, check=True)
        assert json.loads(total.stdout) == sum(i * i for i in range(20))
        pids = every_process_of(first)
        executors = {p for p in pids if b"superpose.cli.executor" in cmdline(p)}
        assert len(executors) >= 2  # each node keeps at least a spare executor
    finally:
        down = superpose_cli("down", home=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "lattice stopped" in down.stdout
    wait_all_gone(pids)
    assert not (tmp_path / "lattice.json").exists()

    again = launch(tmp_path)  # no stale lock, no stale state
    try:
        assert again.output.returncode == 0, again.output.stderr
        assert len(nodes(tmp_path)) == 2
        pids = every_process_of(again)
    finally:
        superpose_cli("down", home=tmp_path, check=True)
    wait_all_gone(pids)


def test_a_killed_node_is_restarted_and_down_still_stops_everything(tmp_path: Path) -> None:
    handle = launch(tmp_path)
    assert handle.output.returncode == 0, handle.output.stderr
    try:
        before = handle.state()["pids"]
        victim = next(name for name in before if name not in ("gateway", "nats-server"))
        old = every_process_of(handle)
        victim_tree = snapshot({before[victim], *descendants(before[victim])})
        assert len(victim_tree) >= 2  # the node and its spare executor
        os.kill(before[victim], signal.SIGKILL)
        deadline = time.monotonic() + WAIT_S
        while handle.state()["pids"][victim] == before[victim]:  # the state follows restarts
            assert time.monotonic() < deadline, "the node was not restarted"
            time.sleep(0.05)
        while len(nodes(tmp_path)) != 2 or victim not in {n["id"] for n in nodes(tmp_path)}:
            assert time.monotonic() < deadline, "the restarted node did not come back"
        wait_all_gone(victim_tree)  # its executors noticed and left
        new = every_process_of(handle)
        node_log = (tmp_path / "logs" / f"node-{victim}.log").read_text()
        assert f"superpose: {victim} was killed by SIGKILL; restarting it" in node_log
    finally:
        superpose_cli("down", home=tmp_path, check=True)
    wait_all_gone(old | new)


def test_down_cleans_up_after_a_crashed_up(tmp_path: Path) -> None:
    handle = launch(tmp_path)
    assert handle.output.returncode == 0, handle.output.stderr
    state = handle.state()
    pids = every_process_of(handle)
    server = state["pids"]["nats-server"]
    try:
        assert alive(server)
        os.kill(state["pid"], signal.SIGKILL)  # no chance to stop its children
        # the server dies with its owner (parent-death signal); nodes (with their
        # executors) and the gateway notice their supervisor is gone and leave too
        wait_all_gone(pids)
        down = superpose_cli("down", home=tmp_path)  # nothing is left for it to stop
        assert down.returncode == 0, down.stderr
    finally:
        for pid, start in pids.items():  # never leave orphans, even when the test fails
            if started(pid) == start:
                os.kill(pid, signal.SIGKILL)
    again = superpose_cli("down", home=tmp_path)
    assert "no lattice is running" in again.stdout


def test_down_stops_what_a_dead_up_left_behind(tmp_path: Path) -> None:
    # A state file whose `up` is gone but whose recorded child still runs (a node
    # on a platform without parent-death signals, say): `down` must stop it.
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        state = {
            "ready": True,
            "pid": 999_999,
            "lattice": "nats://127.0.0.1:1",
            "gateway": "",
            "pids": {"node-x": leftover.pid},
            "starts": {"999999": None, str(leftover.pid): started(leftover.pid)},
        }
        (tmp_path / "lattice.json").write_text(json.dumps(state))
        down = superpose_cli("down", home=tmp_path)
        assert down.returncode == 0, down.stderr
        assert "had died" in down.stdout
        assert leftover.wait(timeout=10) is not None
    finally:
        leftover.kill()
        leftover.wait()


def test_lattice_port_picks_the_nats_port(tmp_path: Path) -> None:
    port = free_port()
    handle = launch(tmp_path, "--lattice-port", str(port))
    try:
        assert handle.output.returncode == 0, handle.output.stderr
        assert handle.state()["lattice"].endswith(f":{port}")
        assert f":{port}" in handle.output.stdout
    finally:
        superpose_cli("down", home=tmp_path)


SLOW_APP = """\
import time
import superpose as sp


@sp.function
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"
"""


def test_down_lets_a_call_in_flight_finish(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    handle = launch(home)
    assert handle.output.returncode == 0, handle.output.stderr
    app = tmp_path / "slowapp"
    app.mkdir()
    (app / "slow.py").write_text(SLOW_APP)
    superpose_cli("deploy", str(app), home=home, check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    caller = subprocess.Popen(
        [sys.executable, "-m", "superpose", "call", "slowapp.slow", "[3]"],
        env={**env, "SUPERPOSE_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while not any(node["busy"] for node in status_json(home)["nodes"]):
            assert time.monotonic() < deadline, "the call never started"
            time.sleep(0.1)
        down = superpose_cli("down", home=home)
        assert down.returncode == 0, down.stderr
        out, err = caller.communicate(timeout=WAIT_S)
    finally:
        caller.kill()
    assert caller.returncode == 0, err
    assert out.strip() == '"finished"'


def status_json(home: Path) -> dict[str, Any]:
    proc = superpose_cli("status", "--json", home=home, check=True)
    state: dict[str, Any] = json.loads(proc.stdout)
    return state
