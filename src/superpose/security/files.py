"""Secret files: written whole, readable by their owner only, in owner-only folders."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from superpose.errors import UserError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter (made if missing, tightened if not)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    path.chmod(PRIVATE_DIR_MODE)
    return path


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600, atomically: a reader never sees half a
    key, and the file is never readable by others, not even for a moment."""
    return write_whole(path, text.encode(), PRIVATE_FILE_MODE)


def write_whole(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to ``path`` whole or not at all (beside it, then renamed over
    it), created with ``mode`` from the start."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask; a reused name keeps its
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def read_json_map(path: Path, what: str, valid: Callable[[Any], bool]) -> dict[str, Any]:
    """The JSON object in ``path`` (names → values ``valid`` accepts); empty when there is
    no file; a UserError naming the file and ``what`` it should be otherwise."""
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not {what} ({exc}); fix it from a backup") from exc
    if not isinstance(found, dict) or not all(
        isinstance(k, str) and valid(v) for k, v in found.items()
    ):
        raise UserError(f"{path} is not {what}; fix it")
    return found
