"""An executor's environment: the built site-packages its user code imports from.

The executor starts neutral with its own modules imported (superpose, nats-py,
msgspec, cloudpickle, …: everything the agent ↔ executor protocol and the wire
codecs use). The environment goes on ``sys.path`` only then, after the bundle and
before the node's own packages, so user code imports the environment's packages
first. A module already imported stays the one in ``sys.modules``: a user who pins
an old msgspec or cloudpickle gets the executor's, and the protocol cannot break.
That shadowing is logged, naming the packages, so nobody debugs the wrong version.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

log = logging.getLogger("superpose.executor")
_NOT_MODULES = (".dist-info", ".data", ".egg-info")


def use_environment(site_packages: Path) -> list[str]:
    """Put ``site_packages`` on ``sys.path`` for user code; returns the environment's
    top-level modules this executor had imported already (they stay the executor's)."""
    sys.path.insert(1, str(site_packages))
    importlib.invalidate_caches()
    shadowed = sorted(
        name
        for name in top_level_names(site_packages)
        if name in sys.modules and not _comes_from(sys.modules[name], site_packages)
    )
    if shadowed:
        log.warning(
            "the environment at %s pins %s, which this executor had imported for itself "
            "(the node ↔ executor protocol needs its own versions): user code gets the "
            "executor's",
            site_packages.parent.name[:12],
            ", ".join(shadowed),
        )
    return shadowed


def top_level_names(site_packages: Path) -> set[str]:
    """Importable top-level names a site-packages folder provides."""
    names: set[str] = set()
    for entry in site_packages.iterdir():
        if entry.name.startswith((".", "_")) and entry.name != "__init__.py":
            continue
        if entry.is_dir() and not entry.name.endswith(_NOT_MODULES) and entry.name != "bin":
            names.add(entry.name)
        elif entry.suffix in (".py", ".so", ".pyd"):
            names.add(entry.name.split(".", 1)[0])
    return names


def _comes_from(module: object, site_packages: Path) -> bool:
    origin = getattr(module, "__file__", None)
    return bool(origin) and Path(str(origin)).is_relative_to(site_packages)
