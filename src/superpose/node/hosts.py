"""The bundles a node hosts: their executors, what those said of each function,
and how many calls are using them (a bundle in use is never evicted). A bundle hosted
with two environments is two hosts: an executor runs with one environment only."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superpose import protocol
from superpose.node.executor_process import ExecutorProcess
from superpose.node.slots import SlotPool

DEFAULT_ASYNC_CONCURRENCY = 100

FunctionKey = tuple[str, str]
"""(module, qualname) of a function in a bundle."""


@dataclass
class BundleHost:
    """The executors hosting one bundle (with one set of settings) on this node, and what
    they told us of its functions."""

    digest: str
    path: Path
    env: str = ""
    """The environment digest its executors run with ("" = the node's own packages)."""
    site_packages: str = ""
    """Where that environment's packages are on this node."""
    settings: protocol.ExecutorSettings | None = None
    """Secrets and env its executors start with: a function with settings of its own
    gets executors of its own, never sharing the process (``os.environ``) with another."""
    executors: list[ExecutorProcess] = field(default_factory=list)
    meta: dict[FunctionKey, asyncio.Task[dict[str, Any]]] = field(default_factory=dict)
    """One describe per function, shared by every call that arrives while it runs."""
    known: dict[FunctionKey, dict[str, Any]] = field(default_factory=dict)
    """Descriptions already received: the fast path reads them without awaiting."""
    async_limits: dict[FunctionKey, SlotPool] = field(default_factory=dict)
    users: int = 0
    """Calls between arrival and completion; a host with users is never evicted."""

    def async_limit(self, key: FunctionKey, meta: dict[str, Any], slots: int) -> SlotPool:
        """An async function's own limit: its ``concurrency`` per node slot."""
        limit = self.async_limits.get(key)
        if limit is None:
            per_slot = int(meta.get("concurrency") or DEFAULT_ASYNC_CONCURRENCY)
            limit = self.async_limits[key] = SlotPool(per_slot * slots)
        return limit

    @property
    def key(self) -> str:
        """Its key in the pool, in ``NodeInfo.warm`` and in its express subject
        (``protocol.host_key``): bundle, environment and settings."""
        return protocol.host_key(self.digest, self.env, self.settings)

    def live_executors(self) -> list[ExecutorProcess]:
        return [e for e in self.executors if e.alive]
