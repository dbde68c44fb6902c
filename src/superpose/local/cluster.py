"""A NATS cluster on this machine: several embedded servers joined by routes.

What ``superpose up --servers 3`` runs, and what the cluster tests and
``bench/failover.py`` kill servers of. Each server has its own JetStream store;
their URL is the servers' URLs joined by commas, as any lattice URL may be.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from superpose.errors import LatticeError
from superpose.local.embedded import ClusterRole, EmbeddedServer, finish_stopping, free_port
from superpose.local.listen import LOOPBACK
from superpose.local.tls import ServerTls
from superpose.security.identities import ServerAuth

JETSTREAM_READY_S = 30.0
"""A new cluster elects its JetStream meta leader before it takes any asset."""
STOP_GRACE_S = 5.0


@dataclass
class EmbeddedCluster:
    """``size`` nats-servers in one cluster; ``url`` is known once ``start()`` returns."""

    state_dir: Path
    size: int = 3
    host: str = LOOPBACK
    """Where every server listens for clients (routes stay on loopback)."""
    first_port: int = -1
    """-1: free ports; else the servers take this port and the next ``size - 1``."""
    tls: ServerTls | None = None
    auth: ServerAuth | None = None
    """What every server checks credentials against (None: no auth)."""
    creds: Path | None = None
    """What this process connects with to see JetStream ready."""
    servers: list[EmbeddedServer] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        if self.size < 1:
            raise LatticeError(f"a cluster needs at least 1 server, got {self.size}")

    async def start(self) -> str:
        if not self.servers:
            route_ports = [free_port() for _ in range(self.size)]
            self.servers = [
                EmbeddedServer(
                    self.state_dir / f"s{i + 1}",
                    port=-1 if self.first_port < 0 else self.first_port + i,
                    host=self.host,
                    role=_role(i, route_ports),
                    tls=self.tls,
                    auth=self.auth,
                )
                for i in range(self.size)
            ]
        try:
            await asyncio.gather(*(server.start() for server in self.servers))
            self.url = ",".join(server.url for server in self.servers)
            await self._wait_for_jetstream()
        except BaseException:
            self.stop()
            raise
        return self.url

    async def _wait_for_jetstream(self) -> None:
        # Imported here: `down` and `up --detach` import this module and must not pay
        # for nats-py, which only a cluster being started needs.
        import nats.errors

        from superpose.lattice.connection import connect

        ca = self.tls.ca_file if self.tls is not None else None
        nc = await connect(self.url, name="superpose-cluster-check", tls_ca=ca, creds=self.creds)
        deadline = time.monotonic() + JETSTREAM_READY_S
        try:
            while True:
                try:
                    await nc.jetstream(timeout=1.0).account_info()
                    return
                except (nats.errors.Error, TimeoutError) as exc:
                    if time.monotonic() > deadline:
                        raise LatticeError(
                            f"the cluster's JetStream was not ready within "
                            f"{JETSTREAM_READY_S:.0f} s ({exc!r}); see {self.state_dir}/s*/"
                            "nats-server.log"
                        ) from exc
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def named(self, server_name: str) -> EmbeddedServer:
        """The server JetStream knows by this name (a stream's leader, say)."""
        for server in self.servers:
            if server.role is not None and server.role.server_name == server_name:
                return server
        raise LatticeError(f"no server named {server_name!r} in this cluster")

    def reload(self, auth: ServerAuth) -> None:
        """Every server trusts ``auth`` from now on (``EmbeddedServer.reload``)."""
        self.auth = auth
        for server in self.servers:
            server.reload(auth)

    def died(self) -> bool:
        return any(server.died() for server in self.servers)

    async def restart(self) -> str:
        """Start again the servers that died, on their ports and stores: they rejoin."""
        await asyncio.gather(*(server.restart() for server in self.servers if server.died()))
        return self.url

    def stop(self) -> None:
        """Idempotent: all servers at once, each gracefully, then killed after a grace."""
        stopping = [server.stop_soon() for server in self.servers]
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in stopping:
            finish_stopping(proc, deadline)

    def pids(self) -> dict[str, int]:
        """Named ``nats-server-<n>``: ``superpose down`` stops every ``nats-server*`` last."""
        return {
            f"nats-server-{i + 1}": server.process.pid
            for i, server in enumerate(self.servers)
            if server.process is not None
        }


def _role(index: int, route_ports: list[int]) -> ClusterRole:
    return ClusterRole(
        server_name=f"s{index + 1}",
        route_port=route_ports[index],
        peer_route_ports=tuple(p for i, p in enumerate(route_ports) if i != index),
    )
