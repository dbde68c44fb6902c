"""Script mode on the caller's side: a script's module travels as a bundle of its own,
and a function with no file (a notebook's, the REPL's) as a by-value bundle."""

from __future__ import annotations

import asyncio
import sys
import types
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.client.threads import run
from superpose.code import by_value, script, store
from superpose.code.include import DECLARED, included_files
from superpose.lattice import payload


@dataclass
class _Packed:
    """A by-value function's bundle, and what would make it stale."""

    watch: by_value.GlobalsWatch
    digest: str = ""
    loaded: tuple[int, int] = (-1, -1)
    """``_loaded()`` when it was packed."""


def _loaded() -> tuple[int, int]:
    """What a bundle built now may hold that an older one lacks: local modules imported
    since, files declared with ``include=`` since. Cheap enough to look at per call."""
    return len(sys.modules), DECLARED.version


class ScriptBundles:
    def __init__(self, nc: NATS, loop: asyncio.AbstractEventLoop) -> None:
        self._nc = nc
        self._loop = loop
        self._bundles: dict[str, tuple[str, str, str, tuple[int, int]]] = {}
        """module name → (digest, module name in the bundle, app, ``_loaded()`` then)."""
        self._values: weakref.WeakKeyDictionary[Any, _Packed] = weakref.WeakKeyDictionary()
        """``@sp.function`` with no file → its by-value bundle."""

    def bundle(self, module_name: str) -> tuple[str, str, str]:
        """(digest, module name on nodes, app name) for a script's module.

        Built and uploaded on first use, and again only when modules were imported
        since (a local module imported later must reach the nodes too).
        """
        loaded = _loaded()
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

    def by_value(self, owner: Any, name: str, fn: types.FunctionType) -> str:
        """The digest of the by-value bundle carrying ``owner`` (an ``@sp.function`` that
        has no file) under ``name``; ``fn`` is the plain function it wraps.

        Packed and uploaded on first use, and again only when a global the function
        reads was rebound (a helper redefined in a later cell) or modules were imported
        since: a warm call looks at those globals, it does not pickle anything.
        """
        packed = self._values.get(owner)
        if packed is None:
            packed = self._values[owner] = _Packed(by_value.GlobalsWatch(fn))
        loaded = _loaded()
        if packed.watch.changed() or packed.loaded != loaded:
            try:
                digest = self._pack(owner, name, fn, packed.digest)
            except BaseException:
                del self._values[owner]  # so the next call tries again
                raise
            packed.digest, packed.loaded = digest, loaded
        return packed.digest

    def _pack(self, owner: Any, name: str, fn: types.FunctionType, had: str) -> str:
        root = Path.cwd().resolve()  # where a notebook's relative paths point
        modules = script.local_modules(root)
        include = DECLARED.of([fn.__module__, *modules])
        files = [*modules.values(), *included_files(root, include)]
        bundle = by_value.bundle(by_value.pack(owner, name, fn), root, files)
        if bundle.digest != had:
            run(self._loop, store.upload(self._nc, bundle))
        return bundle.digest
