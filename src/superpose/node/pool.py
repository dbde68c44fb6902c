"""A node's executor processes: a neutral spare kept ready, and the executors of each
bundle the node hosts, the least recently used idle bundle evicted past the limit.

The agent never imports user code: a bundle is fetched and verified here, then an
executor (the spare, so a cold call does not wait for an interpreter to start) is
told to load it, and asked to describe each function before its first call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import IO, Any, Protocol

from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.code import store
from superpose.node.code_trust import CodeTrust
from superpose.node.config import NodeConfig
from superpose.node.environments import Environments
from superpose.node.executor.environ import not_prepared
from superpose.node.executor_creds import identities_for
from superpose.node.executor_process import Call, ExecutorProcess, LoadFailed
from superpose.node.fork import ForkedChild
from superpose.node.hosts import BundleHost
from superpose.node.sandbox import Confinement

log = logging.getLogger("superpose.node")
SPARE_READY_S = 10.0
FETCH_WITHIN_S = 60.0
"""How long a bundle fetch keeps trying while the bundles store is unavailable (within
the call's own deadline): several elections of its stream's leader, so a failover never
fails the call that needs the bundle, yet a store gone for good is reported."""

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class PoolListener(Protocol):
    """What the pool's executors tell the rest of the node."""

    def on_block(self, call: Call) -> None:
        """A sync call waits on its children: its slot is free meanwhile."""

    def on_unblock(self, call: Call) -> None:
        """It resumed: it takes a slot again."""

    def on_took(self, host: BundleHost, executor: ExecutorProcess, took: protocol.Took) -> None:
        """An executor took an express call straight from a client."""

    def on_result(self, data: bytes) -> None:
        """The encoded result of a durable item this node runs."""

    def warm_changed(self) -> None:
        """The set of bundles held warm changed."""


SecretReader = Callable[[list[str]], Awaitable[dict[str, str]]]
"""Secret names → their values (``lattice.secrets.read`` on the agent's connection)."""


class ExecutorPool:
    def __init__(
        self,
        config: NodeConfig,
        listener: PoolListener,
        spawn: Spawn,
        envs: Environments,
        forked: tuple[ForkedChild, socket.socket] | None = None,
        confinement: Confinement | None = None,
    ) -> None:
        self.config = config
        self.read_secrets: SecretReader | None = None
        """Reads secrets' values for executors (set by the agent, which holds the lattice)."""
        self.confinement = confinement
        """How executors are confined (None: they run as the node's user)."""
        self.cache_root = confinement.root if confinement else config.state_dir
        """Where bundles (and environments) are kept: where executors can read them."""
        self.listener = listener
        self._spawn = spawn
        self.envs = envs
        """Where executors' environments come from (held, pulled or built)."""
        self._forked = forked
        """A neutral executor forked before the event loop started: the first spare."""
        self.hosts: OrderedDict[str, BundleHost] = OrderedDict()
        """By ``protocol.host_key`` (bundle digest, environment digest, settings)."""
        self._host_locks: dict[str, asyncio.Lock] = {}
        self._fetch_locks: dict[str, asyncio.Lock] = {}
        """One fetch of a bundle at a time, whichever hosts (settings) it is for."""
        self._spare: asyncio.Task[ExecutorProcess] | None = None
        self._log: IO[bytes] | None = None
        self.nc: NATS | None = None
        self.code_trust: CodeTrust | None = None
        """Set once connected: no bundle is fetched or loaded unless a trusted key signed it."""
        """Set once the node is connected: bundles are fetched through it."""
        self.cold_loads = 0
        """Bundles loaded into a new executor since the node started."""

    # --- lifecycle -------------------------------------------------------------

    def start_spare(self) -> None:
        """First thing at start-up: its interpreter start and imports (~0.15 s) overlap
        the node's own set-up."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        # Its own only: it holds every executor's output, and the folder may be
        # passable by executors (sandbox.executor_root).
        path = self.config.state_dir / "executors.log"
        self._log = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        path.chmod(0o600)
        self._spare = asyncio.create_task(self._first_spare())

    async def spare_ready(self) -> None:
        """Ready means ready: the first call after `up` must not pay for an executor start."""
        if self._spare is not None:
            await asyncio.wait({self._spare}, timeout=SPARE_READY_S)

    async def quiet(self) -> None:
        """No more express calls anywhere (shutdown): they go to the queue group."""
        await asyncio.gather(*(e.quiet() for e in self.executors()))

    async def close(self) -> None:
        """Stop every executor, the spare too (one still starting is killed)."""
        executors = self.executors()
        if self._spare is not None:
            if not self._spare.done():
                self._spare.cancel()  # still starting: its process is killed on cancel
            spare = await asyncio.gather(self._spare, return_exceptions=True)
            executors += [e for e in spare if isinstance(e, ExecutorProcess)]
        await asyncio.gather(*(e.close() for e in executors), return_exceptions=True)
        if self._log is not None:
            self._log.close()
        if self.confinement is not None:
            await self.confinement.close()

    # --- reading -----------------------------------------------------------------

    def executors(self) -> list[ExecutorProcess]:
        return [e for h in self.hosts.values() for e in h.executors]

    def warm(self) -> list[str]:
        """Keys of the bundle hosts held warm (``protocol.host_key``: the digest, with its
        environment and settings), least recently used first."""
        return list(self.hosts)

    def hosted(self, inv: protocol.Invocation) -> BundleHost | None:
        """The host of the call's bundle with the call's environment, if it is warm."""
        return self.hosts.get(inv.host)

    def full(self) -> bool:
        """Loading one more bundle would evict a warm one."""
        return len(self.executors()) >= self.config.max_executors

    def touch(self, key: str) -> None:
        """A call used this bundle host (``protocol.host_key``): it is the last to be evicted."""
        if key in self.hosts:
            self.hosts.move_to_end(key)

    def cancel(self, inv_id: str) -> list[str]:
        """Kill the executor running ``inv_id``; returns the other calls that died with it."""
        neighbours: list[str] = []
        for executor in self.executors():
            if inv_id in executor.calls:
                neighbours += [c for c in executor.calls if c != inv_id]
                why = f"executor restarted: invocation {inv_id} was cancelled"
                executor.condemn((protocol.ERR_CRASHED, why))
                log.info("✂ cancelled %s", inv_id)
        return neighbours

    # --- bundles -------------------------------------------------------------------

    async def host(self, inv: protocol.Invocation) -> BundleHost:
        """The bundle's host: fetched, verified and loaded into an executor on first sight
        (with its environment, held, pulled or built first). One per bundle, environment
        and settings: ``protocol.host_key``."""
        key = inv.host
        host = self.hosts.get(key)
        if host is None:
            async with self._host_locks.setdefault(key, asyncio.Lock()):
                host = self.hosts.get(key)
                if host is None:
                    host = await self._load(inv, key)
        self.hosts.move_to_end(key)
        return host

    async def _load(self, inv: protocol.Invocation, key: str) -> BundleHost:
        assert self.nc is not None, "bundles are fetched once the node is connected"
        assert self.code_trust is not None, "the trusted keys are known once connected"
        within_s = min(FETCH_WITHIN_S, inv.deadline - time.time())
        await self.code_trust.check(self.nc, inv, within_s)  # before anything is fetched
        async with self._fetch_locks.setdefault(inv.digest, asyncio.Lock()):
            path = await store.materialize(
                self.nc, inv.digest, self.cache_root / "bundles", within_s=within_s
            )
        site_packages = str(await self.envs.prepare(inv)) if inv.env else ""
        host = BundleHost(inv.digest, path, inv.env, site_packages, inv.settings)
        try:
            await self._add_executor(host, inv.app)
        except BaseException:
            self._release_env(host)
            raise
        self.cold_loads += 1
        self.hosts[key] = host
        self.listener.warm_changed()
        with_env = f" with environment {inv.env[:12]}" if inv.env else ""
        log.info("⇣ bundle %s warm (%s)%s", inv.digest[:12], inv.app, with_env)
        return host

    def _release_env(self, host: BundleHost) -> None:
        if host.env:
            self.envs.release(host.env)

    async def prefetch(self, digest: str) -> None:
        """Fetch a bundle an alias just moved to, so its first call here is not cold.

        Files only: an executor would hold memory for a version this node may
        never serve. The lock is ``_load``'s, so a call arriving mid-fetch waits
        for this fetch instead of starting a second one.
        """
        if digest in self.hosts or self.nc is None or self.code_trust is None:
            return
        verdict = await self.code_trust.verdict(self.nc, digest, FETCH_WITHIN_S)
        if not verdict.ok:  # never fetched, let alone loaded
            log.warning("⇣ bundle %s not prefetched: %s", digest[:12], verdict.reason)
            return
        async with self._fetch_locks.setdefault(digest, asyncio.Lock()):
            if digest not in self.hosts:
                await store.materialize(
                    self.nc, digest, self.cache_root / "bundles", within_s=FETCH_WITHIN_S
                )
                log.info("⇣ bundle %s prefetched", digest[:12])

    async def describe(self, host: BundleHost, inv: protocol.Invocation) -> dict[str, Any]:
        """What the bundle's executor says of the function (sync or async, its limits);
        asked once, shared by every call that arrives meanwhile."""
        key = (inv.module, inv.qualname)
        task = host.meta.get(key)
        if task is None:
            task = host.meta[key] = asyncio.create_task(self._describe_once(host, inv))
        try:
            return await asyncio.shield(task)
        except Exception:
            host.meta.pop(key, None)  # let the next call try again (e.g. after a crash)
            raise

    async def _describe_once(self, host: BundleHost, inv: protocol.Invocation) -> dict[str, Any]:
        executor = await self.pick_executor(host, inv.app, is_sync=False)
        meta = await executor.describe(inv.module, inv.qualname)
        host.known[(inv.module, inv.qualname)] = meta
        return meta

    # --- executors -----------------------------------------------------------------

    def ready_executor(
        self, host: BundleHost, is_sync: bool, app: str | None = None
    ) -> ExecutorProcess | None:
        """A live executor that can take the call (of ``app``) now, or None if one must be
        started. One with an app user serves its own app's calls only: a bundle shared by
        apps (script mode's folder) gets an executor per app (docs: "The app user")."""
        live = [e for e in host.live_executors() if app is None or not e.app_user or e.app == app]
        if not live:
            return None
        if not is_sync:
            return min(live, key=lambda e: len(e.calls))
        best = min(live, key=lambda e: e.running_sync)
        if best.running_sync > 0 and len(live) < self.config.slots:
            return None
        return best

    async def pick_executor(self, host: BundleHost, app: str, is_sync: bool) -> ExecutorProcess:
        host.executors = host.live_executors()
        return self.ready_executor(host, is_sync, app) or await self._add_executor(host, app)

    async def _start_executor(self) -> ExecutorProcess:
        return await ExecutorProcess.start(
            self.config.lattice,
            self.config.node_id,
            on_block=self.listener.on_block,
            on_unblock=self.listener.on_unblock,
            log_file=self._log,
            confinement=self.confinement,
        )

    async def _first_spare(self) -> ExecutorProcess:
        if self._forked is None:
            return await self._start_executor()
        (child, sock), self._forked = self._forked, None
        return await ExecutorProcess.take_over(
            child,
            sock,
            on_block=self.listener.on_block,
            on_unblock=self.listener.on_unblock,
            log_file=self._log,
        )

    async def _fresh_executor(self) -> ExecutorProcess:
        """The pre-started neutral executor if there is one; a new spare starts behind it."""
        spare, self._spare = self._spare, asyncio.create_task(self._start_executor())
        if spare is not None:
            try:
                return await spare
            except Exception:
                log.warning("spare executor failed to start", exc_info=True)
        return await self._start_executor()

    async def _add_executor(self, host: BundleHost, app: str) -> ExecutorProcess:
        self._evict_if_full(room_for=1)
        executor = await self._fresh_executor()
        executor.on_took = lambda took: self.listener.on_took(host, executor, took)
        executor.on_result = self.listener.on_result
        try:
            await executor.load(
                host.digest,
                str(host.path),
                app,
                express=self.config.express,
                site_packages=host.site_packages,
                env=host.env,
                key=host.key,
                settings=host.settings,
                secret_values=await self._secret_values(host.settings),
                express_creds=self._app_creds(executor, host.key, app),
            )
        except LoadFailed:  # e.g. a secret is not set: it may be set before the next call
            self._spawn(executor.close())
            raise
        host.executors.append(executor)
        # Loads overlap (a warm-up and a call, two cold bundles): each made room before
        # the other finished, so look again now that this one is in.
        self._evict_if_full(room_for=0, keep=host)
        return executor

    def _app_creds(self, executor: ExecutorProcess, host: str, app: str) -> str:
        """The executor's app user, minted now that it is given its bundle: ``host``'s
        express calls and ``app``'s dicts, queues and cache entries (its own user, minted
        while neutral, may touch none of them). Minted with express off too."""
        return identities_for(self.config.lattice).mint_app(executor.creds, host, app)

    async def _secret_values(self, settings: protocol.ExecutorSettings | None) -> dict[str, str]:
        """The values of the secrets a host's functions name, read here: its executors may
        not read the secrets bucket. LoadFailed (kind ``prepare``) naming one not set."""
        if settings is None or not settings.secrets or self.read_secrets is None:
            return {}
        try:
            return await self.read_secrets(list(settings.secrets))
        except Exception as exc:
            raise LoadFailed(not_prepared(exc)) from exc

    def _evict_if_full(self, room_for: int, keep: BundleHost | None = None) -> None:
        """Close the least recently used idle bundles until ``room_for`` more executors fit."""
        total = len(self.executors())
        if keep is not None and keep.key not in self.hosts:
            total += len(keep.executors)  # being loaded: not in the table yet
        for key, host in list(self.hosts.items()):
            if total + room_for <= self.config.max_executors:
                return
            if host.users == 0 and host is not keep:
                del self.hosts[key]
                total -= len(host.executors)
                for executor in host.executors:
                    self._spawn(executor.close())
                self._release_env(host)
                log.info("evicted bundle %s", key[:12])
                self.listener.warm_changed()
