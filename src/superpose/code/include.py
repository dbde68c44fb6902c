"""Data files a script names with ``include=``: found by glob, shipped inside its bundle.

Script mode ships code, not the files the code reads. ``@sp.function(include=[...])``
names them: each pattern is a glob relative to the bundle's root (the script's
folder, or the current folder for a notebook or REPL), and the executor runs in the
unpacked bundle, so a path that opened here opens there too. Patterns are checked
twice: their shape when the function is decorated (an absolute path or ``..`` could
never be unpacked under the bundle), their matches when the bundle is built (a
pattern matching nothing is a typo, not an empty dataset).

The files belong to the module that declared them, not to the one function: the
functions of a script share its bundle, and a call one of them makes to another
runs in the bundle its node already hosts, so that bundle must hold every file
any of them reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

from superpose.code.bundle import SKIP_DIRS, SKIP_SUFFIXES
from superpose.config import MAX_BUNDLE_BYTES
from superpose.errors import BadRequestError


def check_patterns(include: Iterable[str] | str | None) -> tuple[str, ...]:
    """The patterns as a tuple, or a BadRequestError naming the one that cannot be used."""
    if include is None:
        return ()
    if isinstance(include, str):  # include="data/*.csv" means the one pattern
        include = [include]
    patterns = tuple(include)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip():
            raise BadRequestError(f"include= takes glob patterns (strings), got {pattern!r}")
        posix = PurePosixPath(pattern)
        if posix.is_absolute() or PureWindowsPath(pattern).is_absolute() or ".." in posix.parts:
            raise BadRequestError(
                f"include pattern {pattern!r} leaves the script's folder; name files under "
                "it with a relative pattern such as 'data/*.csv'"
            )
    return patterns


class Declared:
    """The patterns each module's functions declared, in the order they did."""

    def __init__(self) -> None:
        self._by_module: dict[str, dict[str, None]] = {}
        self.version = 0
        """Counts declarations: a bundle packed before the last one may lack its files."""

    def add(self, module: str, patterns: tuple[str, ...]) -> None:
        known = self._by_module.setdefault(module, {})
        if any(p not in known for p in patterns):
            known.update(dict.fromkeys(patterns))
            self.version += 1

    def of(self, modules: Iterable[str]) -> tuple[str, ...]:
        found: dict[str, None] = {}
        for module in modules:
            found.update(self._by_module.get(module, {}))
        return tuple(found)


DECLARED = Declared()
"""What ``@sp.function(include=...)`` declared in this process."""


def included_files(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    """Every file the patterns match under ``root`` (a matched folder brings its files)."""
    found: set[Path] = set()
    resolved_root = root.resolve()
    for pattern in patterns:
        matched = [p for hit in sorted(root.glob(pattern)) for p in _files_of(hit)]
        if not matched:
            raise BadRequestError(
                f"include pattern {pattern!r} matches no file under {root} "
                "(patterns are relative to the script's folder)"
            )
        for path in matched:
            if not path.resolve().is_relative_to(resolved_root):
                raise BadRequestError(
                    f"include pattern {pattern!r} matches {path}, a link to outside {root}"
                )
        found.update(matched)
    files = sorted(found)
    total = sum(p.stat().st_size for p in files)
    if total > MAX_BUNDLE_BYTES:
        raise BadRequestError(
            f"include= names {total // 2**20} MB of files, more than a bundle takes "
            f"({MAX_BUNDLE_BYTES // 2**20} MB); put large inputs in the object store"
        )
    return files


def _files_of(hit: Path) -> list[Path]:
    if hit.is_file():
        return [hit]
    if not hit.is_dir():
        return []
    files = []
    for dirpath, dirnames, filenames in os.walk(hit):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        files += [Path(dirpath) / n for n in sorted(filenames) if not n.endswith(SKIP_SUFFIXES)]
    return files
