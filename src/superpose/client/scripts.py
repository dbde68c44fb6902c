"""Script mode on the caller's side: a script's module travels as a bundle of its own."""

from __future__ import annotations

import asyncio
import sys

from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.client.threads import run
from superpose.code import script, store
from superpose.lattice import payload


class ScriptBundles:
    def __init__(self, nc: NATS, loop: asyncio.AbstractEventLoop) -> None:
        self._nc = nc
        self._loop = loop
        self._bundles: dict[str, tuple[str, str, str, int]] = {}
        """module name → (digest, module name in the bundle, app, modules loaded then)."""

    def bundle(self, module_name: str) -> tuple[str, str, str]:
        """(digest, module name on nodes, app name) for a script's module.

        Built and uploaded on first use, and again only when modules were imported
        since (a local module imported later must reach the nodes too).
        """
        loaded = len(sys.modules)
        found = self._bundles.get(module_name)
        if found is None or found[3] != loaded:
            bundle, root = script.bundle_for(module_name)
            digest = bundle.digest
            if found is None or found[0] != digest:
                run(self._loop, store.upload(self._nc, bundle))
            in_bundle = script.module_name_in_bundle(sys.modules[module_name], root)
            if in_bundle != module_name:  # so its exceptions are this module's classes
                payload.LOCAL_NAMES[in_bundle] = module_name
            app = in_bundle.split(".")[0].replace("-", "_")
            if not protocol.is_valid_name(app):
                app = "script"
            found = self._bundles[module_name] = (digest, in_bundle, app, loaded)
        return found[0], found[1], found[2]
