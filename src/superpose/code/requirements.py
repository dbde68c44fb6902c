"""Where an app declares its packages, read and checked before anything is resolved.

Python people already declare packages in a few places; an app folder is read in
this order, and the first one found is used: ``requirements.txt``, the ``[project]
dependencies`` of ``pyproject.toml``, ``uv.lock`` (exported with uv). Script mode
declares them with ``@sp.function(pip=[...])``, and a deployed folder's functions
may too: their ``pip=`` adds to the folder's file.

Only requirements a package index can satisfy are accepted (``numpy>=2``,
``humanize[extra]; python_version >= "3.11"``): a path or URL (``../lib``,
``file:///...``, ``git+https://...``, ``https://.../x.whl``) would have to be
reachable from every node and is not content-addressed, and an index option in a
file would make the app's environment depend on where it was deployed from. The
lattice's index is set where uv reads it, in ``UV_INDEX_URL`` and friends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superpose.code.environments import RESOLVE_TIMEOUT_S, uv_binary
from superpose.code.include import Declared
from superpose.errors import BadRequestError, DeployError

REQUIREMENTS_TXT = "requirements.txt"
PYPROJECT = "pyproject.toml"
UV_LOCK = "uv.lock"
SOURCES = (REQUIREMENTS_TXT, PYPROJECT, UV_LOCK)
"""Where a folder may declare its packages, in the order they are looked for."""
PIP = "pip="

_INCLUDE_OPTIONS = ("-r", "--requirement")
_INDEX_OPTIONS = (
    *("-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--no-index"),
    *("--trusted-host", "--pre", "--prefer-binary", "--only-binary", "--no-binary"),
)
_MIRROR_HINT = (
    "set the index for the lattice instead, where uv reads it (UV_INDEX_URL, "
    "UV_EXTRA_INDEX_URL, UV_FIND_LINKS) on the deploying machine and on the nodes"
)


@dataclass(frozen=True)
class Declaration:
    """What an app asked for, and where it said so."""

    source: str
    """The file it was read from (``requirements.txt``, …), or ``pip=``."""
    requirements: tuple[str, ...]
    requires_python: str | None = None
    """``[project] requires-python`` of the folder's ``pyproject.toml``, if it has one."""
    unused: tuple[str, ...] = ()
    """Other declaration files in the folder, present and not read (the first one wins)."""


def check_requirement(line: str, where: str) -> str:
    """One requirement as written, or a BadRequestError saying why it cannot be used."""
    text = line.strip()
    if text.startswith(("-e", "--editable")):
        raise BadRequestError(
            f"{where}: {text!r} is an editable install, which nodes cannot get: "
            "publish the package to an index, or put its code in the app's folder"
        )
    if text.startswith("-"):
        raise BadRequestError(f"{where}: option {text.split()[0]!r} is not supported here")
    # Imported here: every process that defines a function imports this module, and
    # packaging costs ~15 ms to import; only checking a requirement needs it.
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        raise BadRequestError(_not_from_an_index(text, where)) from None
    if requirement.url is not None:
        raise BadRequestError(_not_from_an_index(text, where))
    return text


def _not_from_an_index(text: str, where: str) -> str:
    looks_local = text.startswith((".", "/", "~", "file:")) or "://" in text or "@" in text
    what = "a local path or URL" if looks_local else "not a requirement"
    return (
        f"{where}: {text!r} is {what}: only packages from the index are supported "
        "(write a name and versions, e.g. 'numpy>=2'; put your own code in the app's folder)"
    )


def check_pip(pip: Iterable[str] | str | None) -> tuple[str, ...]:
    """``@sp.function(pip=...)``: the requirements as a tuple, each checked."""
    if pip is None:
        return ()
    if isinstance(pip, str):  # pip="numpy" means the one requirement
        pip = [pip]
    checked = []
    for item in pip:
        if not isinstance(item, str) or not item.strip():
            raise BadRequestError(
                f"pip= takes requirements (strings like 'numpy>=2'), got {item!r}"
            )
        checked.append(check_requirement(item, PIP))
    return tuple(checked)


PIP_DECLARED = Declared()
"""What ``@sp.function(pip=...)`` declared in this process, per module: a script's
environment is the union over the modules of its bundle."""


def declared_in(folder: Path) -> Declaration | None:
    """The packages a folder declares, from the first source found; None if it has none."""
    present = [name for name in SOURCES if (folder / name).is_file()]
    requires_python = _requires_python(folder)
    for index, name in enumerate(present):
        requirements = _read(folder, name)
        if requirements is not None:
            unused = tuple(present[index + 1 :])
            return Declaration(name, tuple(requirements), requires_python, unused)
    if requires_python is not None:
        return Declaration(PYPROJECT, (), requires_python)
    return None


def _read(folder: Path, name: str) -> list[str] | None:
    if name == REQUIREMENTS_TXT:
        return read_requirements(folder, folder / name, ())
    if name == PYPROJECT:
        return _project_dependencies(folder / name)
    return export_uv_lock(folder)


def read_requirements(root: Path, path: Path, including: tuple[Path, ...]) -> list[str]:
    """The requirements of a requirements file, following ``-r`` includes within ``root``."""
    where = path.relative_to(root).as_posix()
    found: list[str] = []
    for number, line in _logical_lines(path):
        here = f"{where}:{number}"
        option, _, rest = line.partition(" ")
        option, eq, value = option.partition("=")
        value = (value if eq else rest).strip()
        if option in _INCLUDE_OPTIONS:
            included = _included(root, path, value, here, including)
            found += read_requirements(root, included, (*including, path))
        elif option in _INDEX_OPTIONS or option.startswith(("--index-url", "--extra-index-url")):
            raise BadRequestError(f"{here}: {option} is not honoured in an app: {_MIRROR_HINT}")
        elif option in ("-c", "--constraint"):
            raise BadRequestError(
                f"{here}: constraints files are not supported: pin the versions in "
                f"{REQUIREMENTS_TXT} itself"
            )
        else:
            found.append(check_requirement(_without_hashes(line), here))
    return found


def _logical_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each requirement line: comments dropped, ``\\`` joined."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text = "" if raw.lstrip().startswith("#") else raw.split(" #")[0]
        if not pending:
            start = number
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        joined, pending = (pending + text).strip(), ""
        if joined:
            lines.append((start, joined))
    return lines


def _without_hashes(line: str) -> str:
    """A pinned line as ``uv export`` or pip-compile write it, without its ``--hash``
    options: the lock is hashed again when it is resolved."""
    return " ".join(part for part in line.split() if not part.startswith("--hash"))


def _included(root: Path, path: Path, name: str, here: str, including: tuple[Path, ...]) -> Path:
    """The file an ``-r`` line names, refused outside the app's folder or in a loop."""
    if not name:
        raise BadRequestError(f"{here}: -r needs a file name")
    target = (path.parent / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise BadRequestError(
            f"{here}: -r {name} is outside the app's folder; only files inside it are read"
        )
    if not target.is_file():
        raise BadRequestError(f"{here}: -r {name}: no such file in the app's folder")
    if target in {p.resolve() for p in (*including, path)}:
        raise BadRequestError(f"{here}: -r {name} includes itself (a loop of -r lines)")
    return target


def _pyproject(folder: Path) -> dict[str, Any] | None:
    path = folder / PYPROJECT
    if not path.is_file():
        return None
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadRequestError(f"{PYPROJECT} is not valid TOML: {exc}") from None


def _project_dependencies(path: Path) -> list[str] | None:
    """``[project] dependencies``, or None when the table does not list them."""
    project = (_pyproject(path.parent) or {}).get("project") or {}
    if "dependencies" in (project.get("dynamic") or []):
        raise BadRequestError(
            f"{PYPROJECT}: [project] dependencies are dynamic, so they cannot be read "
            f"without building the project: list them in {REQUIREMENTS_TXT} instead"
        )
    dependencies = project.get("dependencies")
    if dependencies is None:
        return None
    if not isinstance(dependencies, list):
        raise BadRequestError(f"{PYPROJECT}: [project] dependencies must be a list of strings")
    return [check_requirement(str(d), f"{PYPROJECT} [project] dependencies") for d in dependencies]


def _requires_python(folder: Path) -> str | None:
    project = (_pyproject(folder) or {}).get("project") or {}
    found = project.get("requires-python")
    return None if found is None else str(found)


def export_uv_lock(folder: Path) -> list[str]:
    """The packages a ``uv.lock`` pins, as requirements (``uv export`` on a copy, so the
    app's folder is never written to). The project itself and dev groups are left out."""
    with tempfile.TemporaryDirectory(prefix="superpose-uvlock-") as scratch:
        for name in (UV_LOCK, PYPROJECT):
            if (folder / name).is_file():
                shutil.copy(folder / name, Path(scratch) / name)
        command = [uv_binary(), "export", "--format", "requirements-txt", "--frozen"]
        command += ["--no-hashes", "--no-emit-project", "--no-emit-workspace", "--no-dev"]
        command += ["--no-header", "--no-annotate", "--quiet"]
        try:
            done = subprocess.run(
                command,
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=RESOLVE_TIMEOUT_S,
                env={**os.environ, "UV_NO_PROGRESS": "1"},
            )
        except subprocess.TimeoutExpired as exc:
            raise DeployError(f"reading {UV_LOCK} took over {RESOLVE_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        raise DeployError(f"cannot read {UV_LOCK}: {done.stderr.strip()}")
    lines = [line.strip() for line in done.stdout.splitlines()]
    return [check_requirement(line, UV_LOCK) for line in lines if line and not line.startswith("#")]


def check_python(declaration: Declaration, python: str) -> None:
    """Nodes run one Python: refuse an app whose ``requires-python`` excludes it."""
    if declaration.requires_python is None:
        return
    from packaging.specifiers import InvalidSpecifier, SpecifierSet  # (see check_requirement)

    try:
        allowed = SpecifierSet(declaration.requires_python)
    except InvalidSpecifier:
        raise BadRequestError(
            f"{PYPROJECT}: requires-python {declaration.requires_python!r} is not a version "
            "specifier (e.g. '>=3.11')"
        ) from None
    if not any(allowed.contains(f"{python}.{micro}") for micro in range(100)):
        raise DeployError(
            f"{PYPROJECT} requires Python {declaration.requires_python}, but the lattice's "
            f"nodes run Python {python}: nodes run one Python, so widen requires-python "
            "or run the app on a lattice of that Python"
        )
