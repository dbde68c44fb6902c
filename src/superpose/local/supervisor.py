"""A local lattice: nats-server, node agents and the gateway as one supervised tree.

``superpose up`` runs a ``LocalLattice`` in the foreground (``--detach`` runs
that same foreground process in the background). While it runs it holds an
exclusive ``flock`` on ``up.lock`` in the home folder — the kernel drops the
lock if the process dies, so a crash never leaves a stale lock behind — and
``lattice.json`` tells every other command where the lattice is.
``connect()`` uses the same class, without a gateway, in a temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from superpose import config, protocol
from superpose.errors import LatticeError, UserError, how_it_ended
from superpose.local.embedded import EmbeddedServer

READY_TIMEOUT_S = 30.0
RESTART_BACKOFF_S = 1.0
LOCK_NAME = "up.lock"


def _lock_path(home: Path) -> Path:
    return home / LOCK_NAME


def lock_is_held(home: Path) -> bool:
    """True while some ``superpose up`` owns this home."""
    path = _lock_path(home)
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def read_state(home: Path) -> dict[str, Any] | None:
    """The running lattice's state file, or None when no ``up`` is alive in ``home``."""
    path = config.state_file(home)
    if not path.exists() or not lock_is_held(home):
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return state


def find_running_lattice(home: Path) -> str | None:
    state = read_state(home)
    return str(state["lattice"]) if state and state.get("ready") else None


ORPHAN_POLL_S = 0.5


async def orphaned(parent_pid: int | None) -> None:
    """Returns once ``parent_pid`` is no longer our parent (it died); never if None.

    Nodes and the gateway watch the process that supervises them, so a
    supervisor that is killed outright (SIGKILL, OOM) does not leave them
    running and reconnecting forever.
    """
    if parent_pid is None:
        await asyncio.Event().wait()
    while os.getppid() == parent_pid:
        await asyncio.sleep(ORPHAN_POLL_S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """One supervised process, restarted if it dies while the lattice is up."""

    name: str
    argv: list[str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def note_death(self, returncode: int) -> None:
        """Say in the child's own log how it ended, before its restart writes there: a
        silent restart hides a crash (and the calls it cost)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a") as log:
            log.write(f"{stamp} superpose: {self.name} {how_it_ended(returncode)}; restarting it\n")

    async def stop(self, grace_s: float) -> None:
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass(kw_only=True)
class LocalLattice:
    """Everything ``up`` starts. ``state_dir=None`` means a private temporary folder."""

    state_dir: Path | None
    workers: int = 2
    slots: int | None = None
    lattice_port: int = -1
    gateway_port: int | None = None
    """None: no gateway (connect()); 0: a free port."""
    drain_grace_s: float = 10.0
    on_restart: Callable[[], None] | None = None
    """Called after a dead child was started again (``up`` rewrites its state file)."""
    server: EmbeddedServer | None = None
    children: list[Child] = field(default_factory=list)
    url: str = ""
    gateway_url: str = ""
    _temp: bool = False
    _watch: asyncio.Task[None] | None = None
    _stopping: bool = False

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise UserError(f"--workers must be 0 or more, got {self.workers}")
        if self.slots is not None and self.slots < 1:
            raise UserError(f"--slots must be at least 1, got {self.slots}")

    async def start(self) -> str:
        if self.state_dir is None:
            self.state_dir = Path(tempfile.mkdtemp(prefix="superpose-"))
            self._temp = True
        self.server = EmbeddedServer(self.state_dir / "nats", port=self.lattice_port)
        try:
            self.url = await self.server.start()
            slots = self.slots or max(1, (os.cpu_count() or 1) // max(1, self.workers))
            node_ids = [f"n{uuid.uuid4().hex[:6]}" for _ in range(self.workers)]
            self.children = [self._node_child(node_id, slots) for node_id in node_ids]
            if self.gateway_port is not None:
                port = self.gateway_port or free_port()
                self._check_port_free(port)
                self.gateway_url = f"http://127.0.0.1:{port}"
                self.children.append(self._gateway_child(port))
            await asyncio.gather(*(child.start() for child in self.children))
            await self._wait_ready(node_ids)
        except BaseException:
            await self.stop()
            raise
        self._watch = asyncio.create_task(self._keep_alive())
        return self.url

    def _node_child(self, node_id: str, slots: int) -> Child:
        assert self.state_dir is not None
        argv = [
            sys.executable,
            "-m",
            "superpose",
            "worker",
            "--lattice",
            self.url,
            "--node-id",
            node_id,
            "--slots",
            str(slots),
            "--state-dir",
            str(self.state_dir / "nodes" / node_id),
            "--drain-grace",
            str(self.drain_grace_s),
            "--parent-pid",
            str(os.getpid()),
        ]
        return Child(node_id, argv, self.state_dir / "logs" / f"node-{node_id}.log")

    def _gateway_child(self, port: int) -> Child:
        assert self.state_dir is not None
        argv = [
            sys.executable,
            "-m",
            "superpose",
            "gateway",
            "--lattice",
            self.url,
            "--port",
            str(port),
            "--parent-pid",
            str(os.getpid()),
        ]
        return Child("gateway", argv, self.state_dir / "logs" / "gateway.log")

    @staticmethod
    def _check_port_free(port: int) -> None:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise UserError(
                    f"gateway port {port} is in use; pick another with --gateway-port"
                ) from exc

    async def _wait_ready(self, node_ids: list[str]) -> None:
        from superpose.lattice.connection import connect

        nc = await connect(self.url, name="superpose-supervisor")
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            waiting = set(node_ids)
            while waiting or not await self._gateway_answers():
                if time.monotonic() > deadline:
                    what = sorted(waiting) or "the gateway"
                    raise LatticeError(
                        f"the lattice was not ready within {READY_TIMEOUT_S:.0f} s "
                        f"(waiting for {what}); see {self.state_dir}/logs"
                    )
                self._check_children_alive()
                for node_id in list(waiting):
                    try:
                        await nc.request(protocol.node_control_subject(node_id), b"", timeout=0.2)
                        waiting.discard(node_id)
                    except Exception:
                        continue
                await asyncio.sleep(0.02)
        finally:
            await nc.close()

    def _check_children_alive(self) -> None:
        for child in self.children:
            if child.process is not None and child.process.returncode is not None:
                tail = child.log_path.read_text(errors="replace")[-1500:]
                raise LatticeError(f"{child.name} exited during start-up:\n{tail}")

    async def _gateway_answers(self) -> bool:
        if not self.gateway_url:
            return True
        port = int(self.gateway_url.rsplit(":", 1)[1])
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    async def _keep_alive(self) -> None:
        """Self-healing: a nats-server, node or gateway that dies is started again.

        The server comes back on the same port with the same state folder, so every
        acknowledged durable invocation is still there and every client reconnects.
        """
        while True:
            await asyncio.sleep(0.5)
            if self.server is not None and self.server.died() and not self._stopping:
                try:
                    await self.server.restart()
                    if self.on_restart is not None:
                        self.on_restart()
                except Exception as exc:  # the next round tries again
                    print(f"superpose: nats-server did not restart: {exc}", file=sys.stderr)
            for child in self.children:
                proc = child.process
                if proc is not None and proc.returncode is not None and not self._stopping:
                    child.note_death(proc.returncode)
                    child.restarts += 1
                    await asyncio.sleep(RESTART_BACKOFF_S)
                    if not self._stopping:
                        await child.start()
                        if self.on_restart is not None:
                            self.on_restart()

    async def stop(self) -> None:
        """Drain nodes for the grace period, stop the gateway and the server. Idempotent."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        await asyncio.gather(
            *(child.stop(self.drain_grace_s + 5) for child in self.children),
            return_exceptions=True,
        )
        if self.server is not None:
            self.server.stop()
        if self._temp and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def pids(self) -> dict[str, int]:
        found = {c.name: c.process.pid for c in self.children if c.process is not None}
        if self.server is not None and self.server.process is not None:
            found["nats-server"] = self.server.process.pid
        return found


def already_running(home: Path) -> UserError:
    state = read_state(home) or {}
    return UserError(
        f"a lattice is already running in {home} "
        f"(lattice {state.get('lattice') or '?'}, gateway {state.get('gateway') or '-'}); "
        "stop it with `superpose down`"
    )


@contextlib.contextmanager
def exclusive_home(home: Path) -> Iterator[None]:
    """Hold the home's lock for the life of ``up``; refuse if another ``up`` has it."""
    home.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(_lock_path(home), "a+")  # noqa: SIM115 - held for the block
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        # The state file belongs to the ``up`` that holds the lock: leave it alone.
        raise already_running(home) from None
    try:
        yield
    finally:
        config.state_file(home).unlink(missing_ok=True)
        handle.close()


def write_state(home: Path, lattice: LocalLattice, *, ready: bool = True) -> None:
    """``lattice.json``: where the lattice is and which processes make it up.

    Written once as soon as ``up`` holds the lock (``ready: false``, so ``down``
    can stop a lattice that is still starting), again when everything answers,
    and again whenever a child is restarted (its pid changed). Each process is
    recorded with its start time so a recycled pid is never mistaken for it.
    """
    pids = lattice.pids()
    state = {
        "ready": ready,
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "lattice": lattice.url,
        "gateway": lattice.gateway_url,
        "pids": pids,
        "starts": {str(pid): process_start(pid) for pid in [os.getpid(), *pids.values()]},
        "started": time.time(),
    }
    tmp = config.state_file(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(config.state_file(home))


# --- stopping a lattice `up` started ----------------------------------------------


@dataclass
class Stopped:
    """What ``stop_running`` did: nothing ran, a clean stop, or processes it had to kill."""

    running: bool
    killed: list[int] = field(default_factory=list)
    leftovers: bool = False
    """The ``up`` process was already gone (crashed) and its children were cleaned up."""


def process_start(pid: int) -> int | None:
    """When the process started (clock ticks after boot); None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # exited, waiting to be reaped: it runs nothing any more
        return None
    return int(fields[19])  # field 22 of proc(5), counting from the state (field 3)


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
        [proc for name, proc in children.items() if name != "nats-server"],
        [proc for name, proc in children.items() if name == "nats-server"],
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
