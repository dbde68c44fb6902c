"""Which credentials a process connects to a lattice with: one answer, one place.

In order: the ``creds`` given, the tenant's (``tenant=``, else ``$SUPERPOSE_TENANT``:
``creds/<tenant>/<role>.creds`` of the lattice's state folder), ``$SUPERPOSE_CREDS``,
the creds a ``LocalLattice`` in this process registered for that URL (so
``sp.connect()`` of an embedded lattice and the tests need no step), the home folder's
``creds/admin.creds`` when its ``lattice.json`` names that URL (the CLI beside
``superpose up``), else none.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from superpose import config
from superpose.security import tenants
from superpose.security.identities import CREDS_DIR

ADMIN_CREDS = Path("creds") / "admin.creds"
_registered: dict[str, Path] = {}
"""Lattice URL (and each of its servers) → the creds its LocalLattice made."""
_state_dirs: dict[str, Path] = {}
"""Lattice URL (and each of its servers) → its LocalLattice's state folder (tenants)."""


def register(url: str, creds: Path) -> None:
    """Make ``creds`` what this process connects to ``url`` with (a LocalLattice's own)."""
    for key in {url, *url.split(",")}:
        _registered[key] = creds
        if creds.parent.name == CREDS_DIR:  # <state>/creds/admin.creds
            _state_dirs[key] = creds.parent.parent


def forget(url: str) -> None:
    for key in {url, *url.split(",")}:
        _registered.pop(key, None)
        _state_dirs.pop(key, None)


def find_creds(
    url: str, creds: Path | None = None, *, tenant: str | None = None, role: str = "admin"
) -> Path | None:
    """The credentials file to connect to ``url`` with, or None for none. ``role``
    picks a tenant's user (``admin``, ``node`` or ``gateway``)."""
    if creds is not None:
        return creds
    settings = config.settings()
    name = tenant or settings.tenant
    if name:
        return tenant_creds(url, name, role)
    if settings.creds is not None:
        return settings.creds
    return _registered_for(url) or _home_creds(settings.home, url)


def tenant_creds(url: str, tenant: str, role: str = "admin") -> Path:
    """``creds/<tenant>/<role>.creds`` of the state folder of the LocalLattice serving
    ``url`` in this process, else of the home folder; a UserError naming the tenant if
    it has none."""
    state_dir = _state_dirs.get(url) or next(
        (_state_dirs[s] for s in url.split(",") if s in _state_dirs), config.settings().home
    )
    return tenants.role_creds(tenants.load(state_dir, tenant), role)


def _registered_for(url: str) -> Path | None:
    if url in _registered:
        return _registered[url]
    return next((_registered[s] for s in url.split(",") if s in _registered), None)


def _home_creds(home: Path, url: str) -> Path | None:
    """``<home>/creds/admin.creds`` if the lattice ``up`` runs from ``home`` is ``url``."""
    try:
        state = json.loads(config.state_file(home).read_text())
    except (OSError, ValueError):
        return None
    running = str(state.get("lattice") or "")
    creds = home / ADMIN_CREDS
    if running and _servers(running) & _servers(url) and creds.is_file():
        return creds
    return None


def _servers(url: str) -> set[str]:
    """The host:port of each server of a lattice URL: ``tls://`` or ``nats://``, the
    same server asks for the same credentials."""
    return {urlsplit(server).netloc for server in url.split(",")}


def registered(url: str) -> Path | None:
    """The creds a LocalLattice of this process made for ``url`` (tests hand them to the
    processes they start)."""
    return _registered_for(url)
