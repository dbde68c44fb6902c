"""The environments a node's executors run with: held here, pulled, or built once.

A call names its environment by digest (``Invocation.env``); its record
(``env.<digest>`` in the registry bucket) holds the lock. Before the first call
of it here, the node checks it can host it (same Python and platform, disk to
spare, not known to fail), then gets it the cheapest way it can:

1. held in this node's cache (``env_cache.py``): nothing to do;
2. in the lattice's ``sp_envs`` store: pulled (SHA-256 checked) and unpacked;
3. nowhere yet: built with uv (``env_build.py``), packed and uploaded, so every other
   node pulls it. One node builds a digest at a time: the one whose KV ``create``
   of ``envbuild.<digest>`` succeeds; the others wait for its archive.

A build that fails is recorded (``envfail.<digest>``, with uv's last lines), so every
later call of it, on any node, fails at once with that reason. Calls waiting for an
environment hear what they wait for on their log subject, as their own printed
lines would reach them.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from superpose import protocol
from superpose.code.environments import this_platform, this_python
from superpose.lattice import objects
from superpose.node import env_build
from superpose.node.env_cache import EnvCache
from superpose.node.executor_process import LoadFailed
from superpose.node.link import Link

log = logging.getLogger("superpose.node")
MIN_FREE_DISK_BYTES = 512 * 2**20
"""Free disk a node wants before it takes an environment it does not hold."""
LEASE_POLL_S = 0.25
"""How often a node waiting for another's build looks for its archive."""
SHOWN_PACKAGES = 8
"""Packages named in a progress line; the rest are counted."""

Spawn = Callable[[Coroutine[Any, Any, None]], None]


@dataclass
class _Supply:
    """One environment being pulled or built, and the calls that wait for it."""

    task: asyncio.Task[Path] | None = None
    listeners: list[Callable[[str, str], None]] = field(default_factory=list)
    news: tuple[str, str] | None = None
    """What it is doing now: (verb, suffix), e.g. ("pulling", " (12.0 MB)")."""

    def listen(self, listener: Callable[[str, str], None]) -> None:
        self.listeners.append(listener)
        if self.news is not None:
            listener(*self.news)

    def say(self, verb: str, suffix: str = "") -> None:
        self.news = (verb, suffix)
        for listener in self.listeners:
            listener(verb, suffix)


class Environments:
    def __init__(self, link: Link, cache: EnvCache, spawn: Spawn) -> None:
        self.link = link
        self.cache = cache
        self._spawn = spawn
        self.python = this_python()
        self.platform = this_platform()
        self._records: dict[str, protocol.Environment] = {}
        self._supplies: dict[str, _Supply] = {}

    def open(self) -> None:
        self.cache.open()

    def built(self) -> list[str]:
        return self.cache.built()

    def release(self, digest: str) -> None:
        """An executor running with ``digest`` ended: it may be evicted now."""
        self.cache.release(digest)

    # --- a call's environment -----------------------------------------------------------

    async def prepare(self, inv: protocol.Invocation) -> Path:
        """The site-packages ``inv`` runs with, held for it (``release`` when its executor
        ends). ``LoadFailed`` (kind ``prepare``) when it cannot be had here."""
        digest = inv.env
        path = self.cache.site_packages(digest)
        if path is None:
            env = await self.record(digest, inv)
            failure = await self.failure(digest)
            if failure is not None:
                raise _build_failed(inv, env, failure.node, failure.reason)
            why = self.unfit(env)
            if why is not None:
                raise _prepare_failed(
                    inv, env, "EnvironmentUnfit", f"node {self.link.node_id} cannot host it: {why}"
                )
            path = await self._supplied(env, inv)
        self.cache.use(digest)
        return path

    async def record(self, digest: str, inv: protocol.Invocation) -> protocol.Environment:
        """The environment's record (records never change, so it is read once)."""
        env = self._records.get(digest)
        if env is None:
            try:
                entry = await self.link.assets.registry.get(protocol.env_key(digest))
            except KeyNotFoundError:
                raise LoadFailed(
                    protocol.ErrorInfo(
                        protocol.ERR_PREPARE,
                        "EnvironmentNotFound",
                        f"{inv.app}.{inv.fn} runs with environment {digest[:12]}, which is "
                        "not registered (deploy the app again to resolve it)",
                    )
                ) from None
            env = protocol.Environment.from_json(entry.value or b"")
            if protocol.env_digest(env.requirements, env.python, env.platform) != digest:
                raise LoadFailed(  # a record written first by someone else, for this digest
                    protocol.ErrorInfo(
                        protocol.ERR_PREPARE,
                        "EnvironmentTampered",
                        f"{inv.app}.{inv.fn} was not run: the record of its environment "
                        f"{digest[:12]} does not hash to that digest, so the node did not "
                        "install it",
                    )
                )
            self._records[digest] = env
        return env

    async def failure(self, digest: str) -> protocol.EnvFailure | None:
        """Why the environment failed to build, if it did somewhere."""
        try:
            entry = await self.link.assets.registry.get(protocol.env_failure_key(digest))
        except KeyNotFoundError:
            return None
        return protocol.EnvFailure.from_json(entry.value) if entry.value else None

    def unfit(self, env: protocol.Environment) -> str | None:
        """Why this node cannot host ``env``, or None if it can."""
        if env.python != self.python:
            return f"it is resolved for Python {env.python} and this node runs Python {self.python}"
        if env.platform != self.platform:
            return f"it is resolved for {env.platform} and this node is {self.platform}"
        self.cache.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.cache.root).free
        if free < MIN_FREE_DISK_BYTES:
            return f"only {free // 2**20} MB of disk is free here"
        return None

    async def _supplied(self, env: protocol.Environment, inv: protocol.Invocation) -> Path:
        """Join the environment's one pull or build here, hearing what it does."""
        supply = self._supplies.get(env.digest)
        if supply is None:
            supply = self._supplies[env.digest] = _Supply()
            supply.task = asyncio.get_running_loop().create_task(self._obtain(env, supply))
            supply.task.add_done_callback(lambda _: self._supplies.pop(env.digest, None))
        where = f"{inv.app}@{inv.digest[:6]}: {packages_line(env)}"
        supply.listen(
            lambda verb, suffix: self._tell(inv, f"{verb} environment for {where}{suffix}")
        )
        assert supply.task is not None
        try:
            return await asyncio.shield(supply.task)
        except env_build.BuildFailed as exc:
            raise _build_failed(inv, env, exc.node, exc.reason) from None

    def _tell(self, inv: protocol.Invocation, line: str) -> None:
        """One line to the caller, shown as the call's own printed lines are."""
        if not inv.ctx.log_to:
            return
        record = protocol.LogRecord(
            app=inv.app,
            fn=inv.fn,
            node=self.link.node_id,
            invocation=inv.id,
            stream="log",
            line=line,
            ts=time.time(),
        )
        self._spawn(self.link.nc.publish(inv.ctx.log_to, record.encode()))

    # --- getting it: pull, or build once -------------------------------------------------

    async def _obtain(self, env: protocol.Environment, supply: _Supply) -> Path:
        """Pull the archive if the lattice has it, else build it here if no other node is
        building it, else wait for that node's archive (or its failure)."""
        waiting_for = ""
        while True:
            size = await objects.size(
                self.link.assets.js, protocol.ENVS_BUCKET, protocol.env_archive(env.digest)
            )
            if size is not None:
                return await self._pull(env, size, supply)
            failure = await self.failure(env.digest)
            if failure is not None:
                raise env_build.BuildFailed(failure.reason, failure.node)
            holder = await self._lease(env.digest)
            if holder is None:
                return await self._build(env, supply)
            if holder != waiting_for:
                waiting_for = holder
                supply.say(f"waiting for node {holder} to build the")
            await asyncio.sleep(LEASE_POLL_S)

    async def _lease(self, digest: str) -> str | None:
        """Take the build lease of ``digest``: None if ours now, else the node holding it."""
        kv = self.link.assets.registry
        key = protocol.env_build_key(digest)
        mine = protocol.EnvBuild(node=self.link.node_id, started=time.time()).as_json()
        try:
            await kv.create(key, mine)
            return None
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # the build ended meanwhile: look again
            return ""
        holder = protocol.EnvBuild.from_json(entry.value or b"")
        if time.time() - holder.started < protocol.ENV_BUILD_LEASE_S:
            return holder.node
        try:  # its builder died: take it over, unless another node just did
            await kv.update(key, mine, last=entry.revision)
        except KeyWrongLastSequenceError:
            return ""
        log.warning("took over the build of environment %s from node %s", digest[:12], holder.node)
        return None

    async def _build(self, env: protocol.Environment, supply: _Supply) -> Path:
        supply.say("building")
        started = time.monotonic()
        staged = self.cache.staging(env.digest)
        try:
            try:
                await env_build.build(env, staged)
            except env_build.BuildFailed as exc:
                exc.node = self.link.node_id
                await self._record_failure(env, exc.reason)
                raise
            data = await asyncio.to_thread(env_build.pack, staged)
            path = self.cache.adopt(env.digest, staged)
            await self._upload(env, data)
        except BaseException:
            self.cache.discard(staged)
            raise
        finally:
            await self._unlease(env.digest)
        log.info(
            "⚒ environment %s built (%s; %.1f MB packed) in %.2f s",
            env.digest[:12],
            packages_line(env),
            len(data) / 2**20,
            time.monotonic() - started,
        )
        return path

    async def _upload(self, env: protocol.Environment, data: bytes) -> None:
        """For every other node; if it fails, they build it themselves."""
        try:
            await objects.put(
                self.link.nc, protocol.ENVS_BUCKET, protocol.env_archive(env.digest), data
            )
        except Exception:
            log.warning("could not upload environment %s", env.digest[:12], exc_info=True)

    async def _unlease(self, digest: str) -> None:
        try:
            await self.link.assets.registry.purge(protocol.env_build_key(digest))
        except Exception:  # it expires: another node takes it over after the lease time
            log.warning("could not release the build lease of %s", digest[:12], exc_info=True)

    async def _record_failure(self, env: protocol.Environment, reason: str) -> None:
        failure = protocol.EnvFailure(env.digest, reason, self.link.node_id, time.time())
        log.info("✗ environment %s failed to build: %s", env.digest[:12], env_build.summary(reason))
        try:
            await self.link.assets.registry.put(
                protocol.env_failure_key(env.digest), failure.as_json()
            )
        except Exception:
            log.warning("could not record the failed build of %s", env.digest[:12], exc_info=True)

    async def _pull(self, env: protocol.Environment, size: int, supply: _Supply) -> Path:
        supply.say("pulling", f" ({_size_text(size)})")
        started = time.monotonic()
        data = await objects.get(
            self.link.nc, protocol.ENVS_BUCKET, protocol.env_archive(env.digest)
        )
        staged = self.cache.staging(env.digest)
        try:
            await asyncio.to_thread(env_build.unpack, data, staged)
            path = self.cache.adopt(env.digest, staged)
        except BaseException:
            self.cache.discard(staged)
            raise
        log.info(
            "⇣ environment %s pulled (%.1f MB) in %.2f s",
            env.digest[:12],
            size / 2**20,
            time.monotonic() - started,
        )
        return path


def packages_line(env: protocol.Environment) -> str:
    """``tinyone 2.0, tinytwo 2.0`` (the first few, then how many more)."""
    named = [f"{name} {version}" for name, version in sorted(env.packages.items())]
    more = len(named) - SHOWN_PACKAGES
    return (
        ", ".join(named[:SHOWN_PACKAGES]) + (f" and {more} more" if more > 0 else "")
        or "no packages"
    )


def _size_text(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{max(1, size // 1024)} KB"


def _prepare_failed(
    inv: protocol.Invocation,
    env: protocol.Environment,
    type_name: str,
    why: str,
    output: str = "",
) -> LoadFailed:
    """A call whose environment cannot be had: kind ``prepare``, naming the packages,
    the Python and platform it is for, and the reason (with the installer's ``output``)."""
    message = (
        f"{inv.app}.{inv.fn} cannot run: its environment {env.digest[:12]} "
        f"({packages_line(env)}; Python {env.python}, {env.platform}): {why}"
    )
    return LoadFailed(protocol.ErrorInfo(protocol.ERR_PREPARE, type_name, message, output))


def _build_failed(
    inv: protocol.Invocation, env: protocol.Environment, node: str, reason: str
) -> LoadFailed:
    why = f"its build failed on node {node} ({env_build.summary(reason)})"
    return _prepare_failed(inv, env, "BuildFailed", why, reason)
