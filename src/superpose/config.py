"""Where superpose keeps its state and how it finds a running lattice."""

from __future__ import annotations

import os
from pathlib import Path

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


def home() -> Path:
    """The state folder: ``$SUPERPOSE_HOME`` or ``./.superpose``."""
    return Path(os.environ.get(ENV_HOME) or ".superpose").resolve()


def state_file(home_dir: Path) -> Path:
    """Written by ``superpose up`` once everything answers; read by every other command."""
    return home_dir / "lattice.json"


def lattice_from_env() -> str | None:
    return os.environ.get(ENV_LATTICE) or None


def max_deliver(default: int) -> int:
    """Deliveries of a durable envelope before a node fails its items as lost.

    ``$SUPERPOSE_MAX_DELIVER`` overrides it for a node (tests use 1 to reach the
    verdict with a single kill).
    """
    text = os.environ.get(ENV_MAX_DELIVER)
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ENV_MAX_DELIVER}={text!r}: expected a whole number ≥ 1")
    return int(text)


def _on_unless_zero(variable: str) -> bool:
    return os.environ.get(variable, "1") != "0"


def affinity_from_env() -> bool:
    """Warm affinity is on unless ``$SUPERPOSE_AFFINITY=0`` (benchmarks compare both)."""
    return _on_unless_zero(ENV_AFFINITY)


def express_from_env() -> bool:
    """Clients send warm calls straight to executors unless ``$SUPERPOSE_EXPRESS=0``
    (benchmarks compare both; every call then goes through a node agent)."""
    return _on_unless_zero(ENV_EXPRESS)


def max_executors_from_env(default: int) -> int:
    """Warm executors a node keeps (one per bundle version it serves); more costs memory."""
    text = os.environ.get(ENV_MAX_EXECUTORS)
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ENV_MAX_EXECUTORS}={text!r}: expected a whole number ≥ 1")
    return int(text)
