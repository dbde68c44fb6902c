"""A local lattice: nats-server, node agents and the gateway as one supervised tree.

``superpose up`` runs a ``LocalLattice`` in the foreground (``--detach`` runs
that same foreground process in the background), holding its state folder
(``state.py``). ``connect()`` uses the same class, without a gateway, in a
temporary folder. A child that dies is started again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from superpose import config, protocol
from superpose.config import ENV_TLS_CA
from superpose.errors import LatticeError, UserError, how_it_ended
from superpose.local.cluster import EmbeddedCluster
from superpose.local.embedded import EmbeddedServer, free_port
from superpose.local.listen import LOOPBACK, Listen, bracketed, check_free, local_host
from superpose.local.tls import ServerTls
from superpose.security import lookup, tenants
from superpose.security.identities import (
    Identities,
    ServerAuth,
    load_or_create,
    with_current_account,
)
from superpose.support.retry import Backoff

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

READY_TIMEOUT_S = 30.0
RESTART = Backoff(1.0)
"""Before a child that died is started again."""


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


@dataclass
class Child:
    """One supervised process, restarted if it dies while the lattice is up."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    """Set for this child on top of the supervisor's environment."""
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
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
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


class NatsServers(Protocol):
    """The lattice's nats-server: one ``EmbeddedServer``, or an ``EmbeddedCluster``."""

    url: str

    async def start(self) -> str: ...
    def died(self) -> bool: ...
    async def restart(self) -> str: ...
    def stop(self) -> None: ...
    def pids(self) -> dict[str, int]: ...
    def reload(self, auth: ServerAuth) -> None: ...


@dataclass(kw_only=True)
class LocalLattice:
    """Everything ``up`` starts. ``state_dir=None`` means a private temporary folder."""

    state_dir: Path | None
    workers: int = 2
    slots: int | None = None
    lattice_port: int = -1
    """-1 or 0: a free one; with several servers, the first of consecutive ports."""
    listen_host: str = LOOPBACK
    """Where nats-server listens (``--listen``): 0.0.0.0 for every interface."""
    tls: ServerTls | None = None
    """Set: the servers require TLS, and every child trusts its CA."""
    servers: int = 1
    """nats-servers: more than one makes a cluster (JetStream needs 3 to survive a loss)."""
    gateway_port: int | None = None
    """None: no gateway (connect()); 0: a free port."""
    gateway_host: str = LOOPBACK
    gateway_max_connections: int = config.GATEWAY_MAX_CONNECTIONS
    """The gateway's connection cap (``up --gateway-max-connections``)."""
    drain_grace_s: float = 10.0
    sandbox: str | None = None
    """Each node's ``--sandbox``; None: the node's default (``$SUPERPOSE_SANDBOX``, else
    ``user`` as root, ``none`` otherwise)."""
    on_restart: Callable[[], None] | None = None
    """Called after a dead child was started again (``up`` rewrites its state file)."""
    server: NatsServers | None = None
    children: list[Child] = field(default_factory=list)
    url: str = ""
    gateway_url: str = ""
    gateway_token: Path | None = None
    """The file holding the admin token made for the gateway (``gateway_token.py``)."""
    identities: Identities | None = None
    """The lattice's operator, accounts and users, in ``state_dir`` (made at the first
    start, reused on every later one)."""
    _temp: bool = False
    _watch: asyncio.Task[None] | None = None
    _stopping: bool = False

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise UserError(f"--workers must be 0 or more, got {self.workers}")
        if self.slots is not None and self.slots < 1:
            raise UserError(f"--slots must be at least 1, got {self.slots}")
        if self.servers < 1:
            raise UserError(f"--servers must be at least 1, got {self.servers}")
        if self.lattice_port == 0:
            self.lattice_port = -1  # nats-server's "a free port" (its 0 means 4222)
        if self.gateway_max_connections < 1:
            raise UserError(
                f"--gateway-max-connections must be at least 1, got {self.gateway_max_connections}"
            )

    async def start(self) -> str:
        if self.state_dir is None:
            self.state_dir = Path(tempfile.mkdtemp(prefix="superpose-"))
            self._temp = True
        self.identities = tenants.with_tenants(load_or_create(self.state_dir))
        if self.lattice_port > 0:
            for port in range(self.lattice_port, self.lattice_port + self.servers):
                check_free(Listen(self.listen_host, port), "lattice (--listen)")
        self.server = self._nats_servers(self.state_dir / "nats")
        try:
            self.url = await self.server.start()
            lookup.register(self.url, self.identities.creds("admin"))
            slots = self.slots or max(1, (os.cpu_count() or 1) // max(1, self.workers))
            node_ids = [f"n{uuid.uuid4().hex[:6]}" for _ in range(self.workers)]
            self.children = [self._node_child(node_id, slots) for node_id in node_ids]
            if self.gateway_port is not None:
                port = self.gateway_port or free_port()
                check_free(Listen(self.gateway_host, port), "gateway (--gateway-listen)")
                self.gateway_url = f"http://{bracketed(local_host(self.gateway_host))}:{port}"
                self.children.append(self._gateway_child(port))
            await self._prepare_assets()
            await asyncio.gather(*(child.start() for child in self.children))
            await self._wait_ready(node_ids)
        except BaseException:
            await self.stop()
            raise
        self._watch = asyncio.create_task(self._keep_alive())
        return self.url

    def reload_accounts(self) -> None:
        """Have the running servers accept every tenant now in the state folder
        (``superpose tenant create`` made one) and refuse every user revoked there
        (``superpose creds revoke``): their configs are rewritten and reloaded, and the
        lattice stays up, its connections open (but a revoked user's)."""
        if self.identities is None or self.server is None:
            return
        self.identities = tenants.with_tenants(with_current_account(self.identities))
        self.server.reload(self.identities.auth)

    def _nats_servers(self, state_dir: Path) -> NatsServers:
        assert self.identities is not None
        auth = self.identities.auth
        if self.servers > 1:
            return EmbeddedCluster(
                state_dir,
                size=self.servers,
                host=self.listen_host,
                first_port=self.lattice_port,
                tls=self.tls,
                auth=auth,
                creds=self.identities.creds("admin"),
            )
        return EmbeddedServer(
            state_dir, port=self.lattice_port, host=self.listen_host, tls=self.tls, auth=auth
        )

    @property
    def child_env(self) -> dict[str, str]:
        """What every child is told: the CA of a TLS lattice (``lattice/tls.py``)."""
        if self.tls is None or self.tls.ca_file is None:
            return {}
        return {ENV_TLS_CA: str(self.tls.ca_file)}

    @property
    def tls_ca(self) -> Path | None:
        """The CA this process trusts the lattice with (None: the system's store)."""
        return self.tls.ca_file if self.tls is not None else None

    @property
    def admin_creds(self) -> Path:
        """What the supervisor (and a client in this process) connects with."""
        if self.identities is None:
            raise LatticeError("the lattice has no credentials before it started")
        return self.identities.creds("admin")

    def _creds(self, role: str) -> list[str]:
        assert self.identities is not None
        return ["--creds", str(self.identities.creds(role))]

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
            *self._creds("node"),
        ]
        if self.sandbox:
            argv += ["--sandbox", self.sandbox]
        return Child(node_id, argv, self.state_dir / "logs" / f"node-{node_id}.log", self.child_env)

    def _gateway_child(self, port: int) -> Child:
        assert self.state_dir is not None
        argv = [
            sys.executable,
            "-m",
            "superpose",
            "gateway",
            "--lattice",
            self.url,
            "--host",
            self.gateway_host,
            "--port",
            str(port),
            "--max-connections",
            str(self.gateway_max_connections),
            "--parent-pid",
            str(os.getpid()),
            *self._creds("gateway"),
        ]
        return Child("gateway", argv, self.state_dir / "logs" / "gateway.log", self.child_env)

    async def _supervisor_connection(self) -> NATS:
        """This lattice's own connection: its admin creds and CA, whatever the
        environment names (``$SUPERPOSE_CREDS`` may be another lattice's)."""
        from superpose.lattice.connection import connect

        return await connect(
            self.url, name="superpose-supervisor", tls_ca=self.tls_ca, creds=self.admin_creds
        )

    async def _prepare_assets(self) -> None:
        """Before any child starts: the buckets, the trusted deployer keys of whoever
        started the lattice, and (with a gateway) the admin token ``up`` leaves for it."""
        from superpose.lattice.connection import ensure_assets  # nats-py: lazily
        from superpose.local.gateway_token import ensure_admin_token
        from superpose.local.keys import trust_home_key

        assert self.state_dir is not None
        nc = await self._supervisor_connection()
        try:
            assets = await ensure_assets(nc)
            if self.gateway_port is not None:
                self.gateway_token = await ensure_admin_token(assets.tokens, self.state_dir)
            await trust_home_key(assets.trust, home=not self._temp)
        finally:
            await nc.close()

    async def _wait_ready(self, node_ids: list[str]) -> None:
        nc = await self._supervisor_connection()
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
            _, writer = await asyncio.open_connection(local_host(self.gateway_host), port)
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
                    await asyncio.sleep(RESTART.pause_s(child.restarts))
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
        if self.url:
            lookup.forget(self.url)
        if self._temp and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def pids(self) -> dict[str, int]:
        found = {c.name: c.process.pid for c in self.children if c.process is not None}
        if self.server is not None:
            found.update(self.server.pids())
        return found
