"""Stopping a lattice ``up`` started (``superpose down``), whatever state it is in.

``up`` drains its nodes and stops its children before it lets go of the lock, so
a clean stop leaves nothing behind. If it does not finish in time its whole
process group is killed, and if it had died, the children it left are stopped.
Processes are known by the pid and start time ``lattice.json`` recorded, so a
recycled pid is never mistaken for one of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superpose import config
from superpose.local.state import lock_is_held, process_start, read_state


@dataclass
class Stopped:
    """What ``stop_running`` did: nothing ran, a clean stop, or processes it had to kill."""

    running: bool
    killed: list[int] = field(default_factory=list)
    leftovers: bool = False
    """The ``up`` process was already gone (crashed) and its children were cleaned up."""


@dataclass(frozen=True)
class _Proc:
    """A process as ``lattice.json`` recorded it."""

    pid: int
    start: int | None
    """None in a state file without start times: fall back to the command line."""

    def running(self) -> bool:
        now = process_start(self.pid)
        if now is None:
            return False
        if self.start is not None:
            return now == self.start
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as cmdline:
                argv = cmdline.read()
        except OSError:
            return False
        return b"superpose" in argv or b"nats-server" in argv

    def signal(self, sig: signal.Signals) -> bool:
        if not self.running():
            return False
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True


def _recorded(state: dict[str, Any]) -> tuple[_Proc, dict[str, _Proc]]:
    """The ``up`` process and its children (by name) from a state file."""
    starts = state.get("starts", {})

    def proc(pid: Any) -> _Proc:
        start = starts.get(str(pid))
        return _Proc(int(pid), int(start) if start is not None else None)

    return proc(state["pid"]), {str(n): proc(p) for n, p in state.get("pids", {}).items()}


def _raw_state(home: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(config.state_file(home).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return state


def _wait_gone(procs: list[_Proc], deadline: float) -> list[_Proc]:
    while True:
        running = [proc for proc in procs if proc.running()]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.05)


def stop_running(home: Path, timeout_s: float) -> Stopped:
    """Stop the lattice ``up`` runs in ``home``: SIGTERM, then SIGKILL past ``timeout_s``.

    ``up`` drains its nodes and stops its children before it lets go of the lock,
    so a clean stop leaves nothing behind. If ``up`` does not finish in time, its
    whole process group (nodes, executors, gateway) and the nats-server are
    killed. If ``up`` itself had died, its orphaned children are stopped.
    """
    state = read_state(home)
    if state is None:
        return _stop_leftovers(home, timeout_s)
    up, children = _recorded(state)
    up.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while lock_is_held(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not lock_is_held(home):
        return Stopped(running=True)
    killed = []
    if state.get("pgid") == up.pid and up.running():  # a detached `up` leads its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(up.pid, signal.SIGKILL)
            killed.append(up)
    killed += [proc for proc in [up, *children.values()] if proc.signal(signal.SIGKILL)]
    _wait_gone(killed, time.monotonic() + 5)
    config.state_file(home).unlink(missing_ok=True)
    return Stopped(running=True, killed=sorted({proc.pid for proc in killed}))


def _stop_leftovers(home: Path, timeout_s: float) -> Stopped:
    """After an ``up`` that was killed: its children may still run. Stop them too."""
    state = _raw_state(home)
    if state is None or lock_is_held(home):
        return Stopped(running=False)
    try:
        _, children = _recorded(state)
    except (KeyError, TypeError, ValueError):  # not a state file we wrote
        return Stopped(running=False)
    # Nodes and the gateway first (nodes drain through the server), the server last.
    waves = [
        [proc for name, proc in children.items() if not name.startswith("nats-server")],
        [proc for name, proc in children.items() if name.startswith("nats-server")],
    ]
    stopped: list[_Proc] = []
    stubborn: list[_Proc] = []
    for wave in waves:
        targets = [proc for proc in wave if proc.signal(signal.SIGTERM)]
        left = _wait_gone(targets, time.monotonic() + timeout_s)
        for proc in left:
            proc.signal(signal.SIGKILL)
        stopped += targets
        stubborn += left
    _wait_gone(stubborn, time.monotonic() + 5)
    config.state_file(home).unlink(missing_ok=True)
    return Stopped(
        running=bool(stopped), killed=[proc.pid for proc in stubborn], leftovers=bool(stopped)
    )
