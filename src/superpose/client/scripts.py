"""Script mode on the caller's side: a script's module travels as a bundle of its own,
and a function with no file (a notebook's, the REPL's) as a by-value bundle.

Each bundle has an environment too: the union of the ``pip=`` its modules' functions
declared, resolved at its first call for the lattice and cached for the process by
that set of requirements (one resolve however many scripts declare the same).
"""

from __future__ import annotations

import asyncio
import sys
import types
import weakref
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.client.threads import run
from superpose.code import by_value, script, store
from superpose.code.bundle import Bundle
from superpose.code.include import DECLARED, included_files
from superpose.code.requirements import PIP_DECLARED
from superpose.lattice import payload, signing


@dataclass
class _Packed:
    """A by-value function's bundle, and what would make it stale."""

    watch: by_value.GlobalsWatch
    digest: str = ""
    env: str = ""
    loaded: tuple[int, int, int] = (-1, -1, -1)
    """``_loaded()`` when it was packed."""


ResolveEnv = Callable[[tuple[str, ...]], Coroutine[Any, Any, str]]
"""Resolves requirements for the lattice and records them; returns the env digest."""


def _loaded() -> tuple[int, int, int]:
    """What a bundle built now may hold that an older one lacks: local modules imported
    since, files declared with ``include=`` and packages with ``pip=`` since. Cheap
    enough to look at per call."""
    return len(sys.modules), DECLARED.version, PIP_DECLARED.version


class ScriptBundles:
    def __init__(
        self,
        nc: NATS,
        loop: asyncio.AbstractEventLoop,
        resolve_env: ResolveEnv,
        signer: Callable[[], Coroutine[Any, Any, signing.Signer]],
    ) -> None:
        self._nc = nc
        self._signer = signer
        """The deployer key a bundle is signed with, once the lattice trusts it: nodes
        run no code a trusted key did not sign."""
        self._loop = loop
        self._resolve_env = resolve_env
        self._bundles: dict[str, tuple[str, str, str, tuple[int, int, int]]] = {}
        """module name → (digest, module name in the bundle, app, ``_loaded()`` then)."""
        self._env_of: dict[str, str] = {}
        """module name → the env digest of its bundle ("" when it declares no packages)."""
        self._resolved: dict[tuple[str, ...], str] = {}
        """Declared requirements (sorted) → env digest, resolved once per process."""
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
                run(self._loop, self._upload(bundle))
            in_bundle = script.module_name_in_bundle(sys.modules[module_name], root)
            if in_bundle != module_name:  # so its exceptions are this module's classes
                payload.LOCAL_NAMES[in_bundle] = module_name
            app = in_bundle.split(".")[0].replace("-", "_")
            if not protocol.is_valid_name(app):
                app = "script"
            modules = [module_name, *script.local_modules(root)]
            self._env_of[module_name] = self._environment(modules)
            found = self._bundles[module_name] = (digest, in_bundle, app, loaded)
        return found[0], found[1], found[2]

    def env(self, module_name: str) -> str:
        """The env digest of the bundle ``bundle(module_name)`` built ("" for none)."""
        return self._env_of.get(module_name, "")

    def value_env(self, owner: Any) -> str:
        """The env digest of the by-value bundle ``by_value(owner, ...)`` packed."""
        packed = self._values.get(owner)
        return packed.env if packed is not None else ""

    def _environment(self, modules: Iterable[str]) -> str:
        """The env digest for what ``modules`` declared with ``pip=``, resolved on first
        need; a requirement that cannot be resolved fails this call with uv's reason."""
        declared = tuple(sorted(PIP_DECLARED.of(modules)))
        if not declared:
            return ""
        if declared not in self._resolved:
            self._resolved[declared] = run(self._loop, self._resolve_env(declared))
        return self._resolved[declared]

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
                digest, env = self._pack(owner, name, fn, packed.digest)
            except BaseException:
                del self._values[owner]  # so the next call tries again
                raise
            packed.digest, packed.env, packed.loaded = digest, env, loaded
        return packed.digest

    def _pack(self, owner: Any, name: str, fn: types.FunctionType, had: str) -> tuple[str, str]:
        """(bundle digest, env digest) of a freshly packed by-value bundle."""
        root = Path.cwd().resolve()  # where a notebook's relative paths point
        modules = script.local_modules(root)
        include = DECLARED.of([fn.__module__, *modules])
        files = [*modules.values(), *included_files(root, include)]
        env = self._environment([fn.__module__, *modules])
        bundle = by_value.bundle(by_value.pack(owner, name, fn), root, files)
        if bundle.digest != had:
            run(self._loop, self._upload(bundle))
        return bundle.digest, env

    async def _upload(self, bundle: Bundle) -> None:
        await store.upload(self._nc, bundle, signer=await self._signer())
