"""Every version of an app side by side, and the aliases that choose between them.

Versions are never replaced, only added, so going back is moving a pointer:
``alias``, ``promote`` and ``rollback`` rewrite one ``alias.<app>.<name>`` key,
and every reader's registry mirror sees the move through its KV watch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from superpose.errors import UserError
from superpose.protocol import Version
from superpose.registry.mirror import LATEST, AliasEntry, Registry, check_alias_name


@dataclass(frozen=True)
class Changes:
    """Files changed from one version to the next, by content hash."""

    added: int
    removed: int
    modified: int

    @classmethod
    def between(cls, old: dict[str, str], new: dict[str, str]) -> Changes:
        return cls(
            added=len(new.keys() - old.keys()),
            removed=len(old.keys() - new.keys()),
            modified=sum(1 for path in new.keys() & old.keys() if new[path] != old[path]),
        )


@dataclass(frozen=True)
class Move:
    """One alias move, so the CLI can print old → new."""

    app: str
    alias: str
    old: str | None
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new


@dataclass(frozen=True)
class PackageChanges:
    """Packages changed from one version's environment to the next: name → (old, new)
    version, None where the package is absent on that side."""

    changed: dict[str, tuple[str | None, str | None]]

    @classmethod
    def between(cls, old: dict[str, str], new: dict[str, str]) -> PackageChanges:
        names = sorted(old.keys() | new.keys())
        return cls({n: (old.get(n), new.get(n)) for n in names if old.get(n) != new.get(n)})

    def lines(self) -> list[str]:
        """``numpy 2.1.3 → 2.2.0``, ``+humanize 4.9``, ``-six 1.16``."""
        return [
            f"+{name} {new}"
            if old is None
            else f"-{name} {old}"
            if new is None
            else f"{name} {old} → {new}"
            for name, (old, new) in self.changed.items()
        ]


def listing(registry: Registry, app: str) -> dict[str, Any]:
    """The app's versions, newest first, each diffed against the one created before it
    (files by content hash, packages by the versions their environments resolved)."""
    ordered = sorted(registry.versions_of(app).values(), key=lambda v: (v.created, v.id))
    aliases = dict(sorted(registry.aliases.get(app, {}).items()))
    rows = [
        _row(registry, version, ordered[i - 1] if i else None, aliases)
        for i, version in enumerate(ordered)
    ]
    return {
        "app": app,
        "aliases": aliases,
        "versions": rows[::-1],
        "untrusted": registry.untrusted(app),
    }


def packages_of(registry: Registry, version: Version) -> dict[str, str]:
    """Name → version of the packages the version's environment resolved ({} for none,
    or for an environment record this reader has not seen)."""
    env = registry.environments.get(version.env) if version.env else None
    return dict(env.packages) if env is not None else {}


def _row(
    registry: Registry, version: Version, previous: Version | None, aliases: dict[str, str]
) -> dict[str, Any]:
    changes = Changes.between(previous.files, version.files) if previous else None
    packages = None
    if previous is not None and previous.env != version.env:
        packages = PackageChanges.between(
            packages_of(registry, previous), packages_of(registry, version)
        ).lines()
    return {
        "version": version.id,
        "code": version.digest,
        "env": version.env,
        "created": version.created,
        "size": version.size,
        "files": len(version.files),
        "functions": sorted(version.functions),
        "kind": version.kind,
        "previous": previous.id if previous else None,
        "changes": changes.__dict__ if changes else None,
        "packages": packages,
        "aliases": [name for name, digest in aliases.items() if digest == version.id],
        "signer": registry.version_verdict(version).signed_by,
        "trusted": registry.version_verdict(version).ok,
    }


async def move(registry: Registry, app: str, alias: str, ref: str) -> Move:
    """Point ``alias`` at the version ``ref`` names (a digest prefix or another alias)."""
    check_alias_name(alias)
    target = registry.version(app, ref).id
    current = await registry.alias_entry(app, alias)
    return await _move_to(registry, app, alias, current, target)


async def promote(registry: Registry, app: str, ref: str) -> Move:
    """Make ``ref`` what unqualified calls get: move ``latest``."""
    return await move(registry, app, LATEST, ref)


async def rollback(registry: Registry, app: str) -> Move:
    """Move ``latest`` back to the newest other version it pointed at.

    The alias's own KV history is the record of what was live, so no extra
    bookkeeping is needed; a second rollback therefore undoes the first.
    """
    versions = registry.versions_of(app)
    history = await registry.alias_history(app, LATEST)
    if not history or history[-1].digest is None:
        raise UserError(f"{app} has no `{LATEST}` alias to roll back")
    current = history[-1]  # what the compare-and-set must find
    # Values no trusted key signed were never followed: the history callers lived is
    # the trusted one, and rollback never goes back to anything else.
    trusted = [e.digest for e in history if e.trusted and e.digest is not None]
    live = trusted[-1] if trusted else current.digest
    earlier = (d for d in reversed(trusted) if d != live and d in versions)
    target = next(earlier, None)
    if target is None:
        raise UserError(
            f"nothing to roll back to: `{LATEST}` of {app} has pointed only at "
            f"{(live or '')[:12]} in its last {len(trusted)} trusted move(s)"
        )
    move = await _move_to(registry, app, LATEST, current, target)
    return Move(app, LATEST, live, move.new)


async def _move_to(
    registry: Registry, app: str, alias: str, current: AliasEntry | None, target: str
) -> Move:
    old = current.digest if current else None
    if old != target:  # an unchanged alias keeps its history free of no-op entries
        await registry.move_alias(app, alias, target, current)
    return Move(app, alias, old, target)
