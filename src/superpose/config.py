"""Settings: the environment variables superpose reads, and defaults with units."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from superpose.errors import BadRequestError, SettingError

ENV_HOME = "SUPERPOSE_HOME"
ENV_LATTICE = "SUPERPOSE_LATTICE"
ENV_NATS_SERVER = "SUPERPOSE_NATS_SERVER"
ENV_REPLICAS = "SUPERPOSE_REPLICAS"
ENV_MAX_DELIVER = "SUPERPOSE_MAX_DELIVER"
ENV_AFFINITY = "SUPERPOSE_AFFINITY"
ENV_MAX_EXECUTORS = "SUPERPOSE_MAX_EXECUTORS"
ENV_EXPRESS = "SUPERPOSE_EXPRESS"
ENV_ENV_CACHE_MB = "SUPERPOSE_ENV_CACHE_MB"
ENV_TLS_CA = "SUPERPOSE_TLS_CA"
ENV_TLS_SERVER_NAME = "SUPERPOSE_TLS_SERVER_NAME"
"""The host name a lattice's TLS certificate is checked against when it is not the
URL's: a ``bwrap`` executor dials its relay on 127.0.0.1 (node/executor/relay.py)."""
ENV_SANDBOX = "SUPERPOSE_SANDBOX"
SANDBOX_MODES = ("none", "user", "bwrap")
SANDBOX_UIDS = range(61184, 61184 + 4336)
"""The uids a root node gives its executors: systemd's DynamicUser range, which nothing
else should own (``node/sandbox.py``)."""
"""How a node confines its executors (``superpose worker --sandbox``; docs/architecture.md,
Sandbox)."""
ENV_CREDS = "SUPERPOSE_CREDS"
ENV_TENANT = "SUPERPOSE_TENANT"
ENV_REF_GRACE = "SUPERPOSE_REF_GRACE_S"
DEFAULT_REF_GRACE_S = 60.0
"""How long an ephemeral object outlives the last Ref to it (in the process that put
it, a pending call, or a process renewing a lease on it)."""

DEFAULT_GATEWAY_PORT = 8700
DEFAULT_TIMEOUT_S = 300.0
"""A function's timeout unless it declares one (AWS Lambda allows 900 s, Modal 300 s)."""
WAIT_MARGIN_S = 10.0
"""How much longer than a function's timeout a caller waits for the node's verdict."""
SPILL_THRESHOLD_BYTES = 256 * 1024
"""Arguments and results above this size travel through the object store."""
MAX_BUNDLE_BYTES = 200 * 1024 * 1024
"""Total size of a bundle's files, checked from ``lstat`` sizes before any file is read."""
MAX_BUNDLE_FILES = 10_000
"""Files in one bundle: each is an object a node fetches, and the listing travels in the
version's registry record."""
MAX_BUNDLE_DEPTH = 32
"""Folders a bundle path may nest (``a/b/c.py`` is 3 deep)."""
MAX_BUNDLE_PATH_BYTES = 1024
"""Length of a bundle path in UTF-8 bytes (one name is at most 255, as on Linux)."""
MAX_HTTP_BODY_BYTES = 16 * 1024 * 1024
GATEWAY_MAX_CONNECTIONS = 1000
"""Connections the gateway holds open at once; past it a new one takes the place of
the one waiting longest for its request headers, or is refused with a 503."""
GATEWAY_HEADER_TIMEOUT_S = 10.0
"""How long a client may take to send a request's line and headers."""
GATEWAY_BODY_TIMEOUT_S = 60.0
"""How long a client may take to send a request's body, once its headers are in."""
DEFAULT_ENV_CACHE_MB = 10 * 1024
"""Disk a node's built environments may take before the least recently used go."""
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
    """``$SUPERPOSE_LATTICE``: the lattice to use when no URL is given (one NATS URL, or
    a cluster's, separated by commas; checked by ``lattice_servers``)."""
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
    env_cache_mb: int
    """``$SUPERPOSE_ENV_CACHE_MB`` (≥ 1, default 10240): disk a node's built environments
    may take; past it the least recently used one no executor runs with is removed."""
    tls_ca: Path | None = None
    """``$SUPERPOSE_TLS_CA``: the CA certificate (PEM) a ``tls://`` lattice's certificate
    is checked against, instead of the system's trust store; must be a file."""
    sandbox: str | None = None
    """``$SUPERPOSE_SANDBOX`` (``none``, ``user`` or ``bwrap``): a node's default for
    ``--sandbox``; unset, ``user`` when the node runs as root, else ``none``."""
    creds: Path | None = None
    """``$SUPERPOSE_CREDS``: the NATS credentials file (``.creds``) to connect with when
    none is given; checked to be a readable file."""
    tenant: str | None = None
    """``$SUPERPOSE_TENANT``: the tenant whose credentials (in the home folder) to connect
    with; overrides ``$SUPERPOSE_CREDS`` (docs: README, Tenants)."""
    ref_grace_s: float = DEFAULT_REF_GRACE_S
    """``$SUPERPOSE_REF_GRACE_S`` (seconds ≥ 0, default 60): how long an ephemeral object
    is kept once no Ref to it is alive; readers renew leases every third of theirs
    (docs: README, Data)."""


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings as the environment (``os.environ`` unless given) says now."""
    env = os.environ if environ is None else environ
    return Settings(
        home=Path(env.get(ENV_HOME) or ".superpose").resolve(),
        lattice=_lattice(env),
        nats_server=env.get(ENV_NATS_SERVER) or None,
        replicas=_whole(env, ENV_REPLICAS, default=1, high=5),
        max_deliver=_whole(env, ENV_MAX_DELIVER, default=MAX_DELIVER),
        max_executors=_whole(env, ENV_MAX_EXECUTORS, default=8),
        affinity=env.get(ENV_AFFINITY, "1") != "0",
        express=env.get(ENV_EXPRESS, "1") != "0",
        env_cache_mb=_whole(env, ENV_ENV_CACHE_MB, default=DEFAULT_ENV_CACHE_MB),
        tls_ca=_file(env, ENV_TLS_CA),
        sandbox=_sandbox(env),
        creds=_readable_file(env, ENV_CREDS),
        tenant=env.get(ENV_TENANT) or None,
        ref_grace_s=_nonnegative_seconds(env, ENV_REF_GRACE, default=DEFAULT_REF_GRACE_S),
    )


LATTICE_SCHEMES = ("nats", "tls", "ws", "wss")
"""The URL schemes nats-py connects with."""
LATTICE_EXAMPLE = "e.g. nats://127.0.0.1:4222, or several separated by commas"


def lattice_servers(url: str) -> list[str]:
    """The servers of a lattice URL: one NATS URL, or several joined by commas (the
    servers of a cluster, which nats-py is handed as a list).

    The one parser of lattice URLs: flags, ``$SUPERPOSE_LATTICE`` and ``connect(url=)``
    all come through here, so a typo is refused where it was typed, naming the bad
    part, instead of surfacing as nats-py's "invalid connect url option".
    """
    why = _bad_lattice(url)
    if why:
        raise BadRequestError(f"lattice URL {url!r}: {why}")
    return url.split(",")


def _bad_lattice(url: str) -> str | None:
    """What is wrong with a lattice URL, naming the bad server if there are several."""
    servers = url.split(",")
    for server in servers:
        why = _bad_server(server)
        if why:
            where = f"{server!r}: " if server and len(servers) > 1 else ""
            return f"{where}{why} (expected {LATTICE_EXAMPLE})"
    return None


def _bad_server(server: str) -> str | None:
    """What is wrong with one server's URL, or None."""
    if not server:
        return "a server is empty (two commas in a row, or one at an end)"
    if any(char.isspace() for char in server):
        return "spaces are not allowed"
    parts = urlsplit(server)
    if parts.scheme not in LATTICE_SCHEMES or not server.startswith(f"{parts.scheme}://"):
        *others, last = (f"{scheme}://" for scheme in LATTICE_SCHEMES)
        return f"it must start with {', '.join(others)} or {last}"
    try:
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        return "the port is not a whole number from 0 to 65535"
    if not parts.hostname:
        return "no host"
    return None


def _lattice(env: Mapping[str, str]) -> str | None:
    text = env.get(ENV_LATTICE)
    if not text:
        return None
    why = _bad_lattice(text)
    if why:
        raise SettingError(f"{ENV_LATTICE}={text!r}: {why}")
    return text


def _sandbox(env: Mapping[str, str]) -> str | None:
    text = env.get(ENV_SANDBOX)
    if not text:
        return None
    if text not in SANDBOX_MODES:
        raise SettingError(f"{ENV_SANDBOX}={text!r}: expected one of {', '.join(SANDBOX_MODES)}")
    return text


def _readable_file(env: Mapping[str, str], name: str) -> Path | None:
    """The file a variable names, or None when it is unset; one that cannot be read is
    refused here rather than as a refused connection later."""
    text = env.get(name)
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise SettingError(f"{name}={text!r}: no such file")
    if not os.access(path, os.R_OK):
        raise SettingError(f"{name}={text!r}: the file is not readable by this user")
    return path.resolve()


def _whole(env: Mapping[str, str], name: str, *, default: int, high: int | None = None) -> int:
    """A whole number from 1 (to ``high``), or ``default`` when the variable is unset."""
    text = env.get(name)
    if not text:
        return default
    if not text.isdigit() or int(text) < 1 or (high is not None and int(text) > high):
        wanted = "≥ 1" if high is None else f"from 1 to {high}"
        raise SettingError(f"{name}={text!r}: expected a whole number {wanted}")
    return int(text)


def _file(env: Mapping[str, str], name: str) -> Path | None:
    """A file that must exist, or None when the variable is unset."""
    text = env.get(name)
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise SettingError(f"{name}={text!r}: no such file")
    return path.resolve()


def state_file(home_dir: Path) -> Path:
    """Written by ``superpose up`` once everything answers; read by every other command."""
    return home_dir / "lattice.json"


def _nonnegative_seconds(env: Mapping[str, str], name: str, *, default: float) -> float:
    """A duration in seconds (0 or more, fractions allowed), or ``default`` when unset."""
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise SettingError(f"{name}={text!r}: expected a number of seconds, 0 or more")
    return value
