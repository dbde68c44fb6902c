"""Settings: the environment variables superpose reads, and defaults with units."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from superpose.errors import SettingError

ENV_HOME = "SUPERPOSE_HOME"
ENV_LATTICE = "SUPERPOSE_LATTICE"
ENV_NATS_SERVER = "SUPERPOSE_NATS_SERVER"
ENV_REPLICAS = "SUPERPOSE_REPLICAS"
ENV_MAX_DELIVER = "SUPERPOSE_MAX_DELIVER"
ENV_AFFINITY = "SUPERPOSE_AFFINITY"
ENV_MAX_EXECUTORS = "SUPERPOSE_MAX_EXECUTORS"
ENV_EXPRESS = "SUPERPOSE_EXPRESS"

DEFAULT_GATEWAY_PORT = 8700
DEFAULT_TIMEOUT_S = 300.0
"""A function's timeout unless it declares one (AWS Lambda allows 900 s, Modal 300 s)."""
WAIT_MARGIN_S = 10.0
"""How much longer than a function's timeout a caller waits for the node's verdict."""
SPILL_THRESHOLD_BYTES = 256 * 1024
"""Arguments and results above this size travel through the object store."""
MAX_BUNDLE_BYTES = 200 * 1024 * 1024
MAX_HTTP_BODY_BYTES = 16 * 1024 * 1024
MAX_DELIVER = 10
"""Deliveries of one envelope before its unfinished items are dead-lettered (node-killing
poison). The node enforces it; JetStream's max_deliver is unbounded so that a node dying
on that last delivery cannot leave the items without a stored result."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every environment variable superpose reads, read and checked in one place.

    A bad value fails as one ``SettingError`` naming the variable and what it
    takes, wherever settings are read; nothing reads ``os.environ`` elsewhere.
    """

    home: Path
    """``$SUPERPOSE_HOME``, else ``./.superpose``: the state folder of ``superpose up``."""
    lattice: str | None
    """``$SUPERPOSE_LATTICE``: the lattice to use when no URL is given."""
    nats_server: str | None
    """``$SUPERPOSE_NATS_SERVER``: the nats-server binary an embedded lattice runs."""
    replicas: int
    """``$SUPERPOSE_REPLICAS`` (1-5, default 1): copies JetStream keeps of each asset."""
    max_deliver: int
    """``$SUPERPOSE_MAX_DELIVER`` (≥ 1): deliveries of a durable envelope before a node
    fails its items as lost (tests use 1 to reach the verdict with a single kill)."""
    max_executors: int
    """``$SUPERPOSE_MAX_EXECUTORS`` (≥ 1, default 8): warm executors a node keeps (one
    per bundle version it serves); more costs memory."""
    affinity: bool
    """``$SUPERPOSE_AFFINITY`` (on unless ``0``): a node hands a call for a bundle it
    lacks to a node holding it warm (benchmarks compare both)."""
    express: bool
    """``$SUPERPOSE_EXPRESS`` (on unless ``0``): clients send warm calls straight to
    executors (benchmarks compare both; every call then goes through a node agent)."""


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings as the environment (``os.environ`` unless given) says now."""
    env = os.environ if environ is None else environ
    return Settings(
        home=Path(env.get(ENV_HOME) or ".superpose").resolve(),
        lattice=env.get(ENV_LATTICE) or None,
        nats_server=env.get(ENV_NATS_SERVER) or None,
        replicas=_whole(env, ENV_REPLICAS, default=1, high=5),
        max_deliver=_whole(env, ENV_MAX_DELIVER, default=MAX_DELIVER),
        max_executors=_whole(env, ENV_MAX_EXECUTORS, default=8),
        affinity=env.get(ENV_AFFINITY, "1") != "0",
        express=env.get(ENV_EXPRESS, "1") != "0",
    )


def _whole(env: Mapping[str, str], name: str, *, default: int, high: int | None = None) -> int:
    """A whole number from 1 (to ``high``), or ``default`` when the variable is unset."""
    text = env.get(name)
    if not text:
        return default
    if not text.isdigit() or int(text) < 1 or (high is not None and int(text) > high):
        wanted = "≥ 1" if high is None else f"from 1 to {high}"
        raise SettingError(f"{name}={text!r}: expected a whole number {wanted}")
    return int(text)


def state_file(home_dir: Path) -> Path:
    """Written by ``superpose up`` once everything answers; read by every other command."""
    return home_dir / "lattice.json"
