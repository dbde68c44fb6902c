"""What a path inside a bundle may look like, checked where bundles are built and read.

A bundle path is written by one machine and unpacked by others, so a path that is
harmless where it was made can still escape the bundle folder, fail to be created,
or alter the bundle's digest elsewhere. The same rules apply to a folder being
deployed (the names on disk) and to a manifest a node or client decodes from the
store (whatever anyone wrote there):

- relative POSIX paths of UTF-8 names, no empty component (``a//b``, a trailing
  ``/``), no ``.`` or ``..``;
- no NUL and no control character: the digest is computed over ``<sha256>  <path>``
  lines, so a newline in a path could make two different bundles hash alike;
- at most ``MAX_BUNDLE_DEPTH`` components, ``MAX_BUNDLE_PATH_BYTES`` bytes in all,
  255 bytes in one name (Linux's NAME_MAX: longer could not be unpacked);
- no path that is both a file and a folder (``a`` and ``a/b``), and not the node's
  completion marker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from superpose.config import MAX_BUNDLE_DEPTH, MAX_BUNDLE_PATH_BYTES
from superpose.errors import DeployError

MAX_NAME_BYTES = 255
"""One component's length in bytes (NAME_MAX on Linux and macOS)."""
COMPLETE_MARKER = ".superpose-complete"
"""Written last into an unpacked bundle on a node: a bundle cannot bring its own."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def shown(path: str) -> str:
    """The path for a message: a name that is not UTF-8 shows its raw bytes."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return repr(os.fsencode(path))
    return repr(path)


def problem(path: str) -> str | None:
    """Why ``path`` cannot be a bundle path, or None if it can."""
    if not isinstance(path, str) or not path:
        return "is empty"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not a UTF-8 name (rename the file)"
    if "\x00" in path:
        return "holds a NUL byte"
    if _CONTROL.search(path):
        return "holds a control character (a newline, tab, ...)"
    if path.startswith("/") or re.match(r"[A-Za-z]:[\\/]", path):
        return "is absolute (bundle paths are relative to the bundle's folder)"
    return _components_problem(path.split("/"), len(encoded))


def _components_problem(parts: list[str], size: int) -> str | None:
    if "" in parts:
        return "has an empty component (a doubled or trailing '/')"
    if "." in parts or ".." in parts:
        return "has a '.' or '..' component"
    if len(parts) > MAX_BUNDLE_DEPTH:
        return f"nests {len(parts)} deep, more than the limit of {MAX_BUNDLE_DEPTH}"
    if size > MAX_BUNDLE_PATH_BYTES:
        return f"is {size} bytes long, more than the limit of {MAX_BUNDLE_PATH_BYTES}"
    longest = max(len(p.encode("utf-8")) for p in parts)
    if longest > MAX_NAME_BYTES:
        return f"has a name of {longest} bytes, more than the limit of {MAX_NAME_BYTES}"
    if parts == [COMPLETE_MARKER]:
        return "is the name nodes mark an unpacked bundle with"
    return None


def require(path: str, where: str) -> str:
    """``path`` if it can be a bundle path, else a DeployError naming it (in ``where``)."""
    why = problem(path)
    if why is not None:
        raise DeployError(f"{where}: path {shown(path)} {why}")
    return path


def require_digest(path: str, digest: object, where: str) -> str:
    """A file's listed digest: 64 lowercase hex characters (it names an object)."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise DeployError(f"{where}: path {shown(path)} has no valid SHA-256 ({digest!r})")
    return digest


def require_layout(paths: Iterable[str], where: str) -> None:
    """No path is also the folder of another (``a`` beside ``a/b`` cannot be unpacked)."""
    files = set(paths)
    for path in sorted(files):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in files:
                raise DeployError(
                    f"{where}: {shown(folder)} is a file and also the folder of {shown(path)}"
                )
