"""A node's settings, validated when the node is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from superpose import protocol
from superpose.config import SANDBOX_MODES, settings


@dataclass(kw_only=True)
class NodeConfig:
    lattice: str
    node_id: str
    state_dir: Path
    slots: int = 1
    """How many sync invocations run at once; an async function runs up to its
    ``concurrency`` (default 100) invocations per slot."""
    labels: dict[str, str] = field(default_factory=dict)
    pipeline_depth: int = 8
    """Sync calls sent ahead to an executor per slot, so it runs them back to back."""
    max_executors: int = field(default_factory=lambda: settings().max_executors)
    """Warm executor processes kept; the least recently used idle one is evicted past this."""
    drain_grace_s: float = 10.0
    affinity: bool = field(default_factory=lambda: settings().affinity)
    """Hand a call for a bundle this node lacks to a node holding it warm and idle."""
    express: bool = field(default_factory=lambda: settings().express)
    """Warm executors take calls straight from clients (see node/executor)."""
    env_cache_bytes: int = field(default_factory=lambda: settings().env_cache_mb * 2**20)
    """Disk the node's built environments may take (least recently used go first)."""
    sandbox: str = "none"
    """How executors are confined: ``none`` (as the node's user), ``user`` (a user of
    their own each) or ``bwrap`` (that, inside bubblewrap); see node/sandbox.py."""

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, got {self.slots}")
        if self.pipeline_depth < 1:
            raise ValueError(f"pipeline_depth must be at least 1, got {self.pipeline_depth}")
        if self.max_executors < 1:
            raise ValueError(f"max_executors must be at least 1, got {self.max_executors}")
        if self.env_cache_bytes < 1:
            raise ValueError(f"env_cache_bytes must be at least 1, got {self.env_cache_bytes}")
        if self.sandbox not in SANDBOX_MODES:
            modes = ", ".join(SANDBOX_MODES)
            raise ValueError(f"sandbox must be one of {modes}, got {self.sandbox!r}")
        if not protocol.is_valid_name(self.node_id):
            raise ValueError(f"node id {self.node_id!r} must be letters, digits, _ and -")

    def capacity(self) -> int:
        """Sync calls this node runs or has sent ahead at once."""
        return self.slots * self.pipeline_depth
