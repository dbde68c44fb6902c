"""Import an app's ASGI entry in a throwaway process and say what happened, as JSON.

``deploy --asgi`` runs ``python -m superpose.code.probe MODULE ATTR`` in a
copy of the bundle: an entry that cannot be imported must be refused before
anything is registered, and only importing it tells. The deploying process
itself never imports user code.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any


def probe(root: Path, module: str, attr: str) -> dict[str, Any]:
    """``{"ok": true}``, or what failed and the bundle file and line where it did."""
    sys.path.insert(0, str(root))
    try:
        target: Any = importlib.import_module(module)
    except BaseException as exc:  # anything the import raised is the user's to see
        return _failure(root, exc)
    for part in attr.split("."):
        if not hasattr(target, part):
            return {"ok": False, "message": f"{module} has no attribute {attr!r}"}
        target = getattr(target, part)
    if not callable(target):
        return {"ok": False, "message": f"{module}:{attr} is not callable"}
    if not (inspect.iscoroutinefunction(target) or _async_call(target)):
        return {
            "ok": False,
            "message": f"{module}:{attr} is not an ASGI application (its call is not async; "
            "a WSGI app such as Flask needs an ASGI adapter)",
        }
    return {"ok": True}


def _async_call(target: Any) -> bool:
    return inspect.iscoroutinefunction(type(target).__call__)


def _failure(root: Path, exc: BaseException) -> dict[str, Any]:
    file, line = _where(root, exc)
    return {
        "ok": False,
        "type": type(exc).__name__,
        "message": str(exc),
        "file": file,
        "line": line,
        "traceback": _bundle_traceback(root, exc),
    }


def _bundle_traceback(root: Path, exc: BaseException) -> str:
    """The traceback from the first frame in the bundle on, with paths relative to it:
    the import machinery and the temporary copy's location are noise to the user."""
    tb = exc.__traceback__
    while tb is not None and not _in(root, tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    return text.replace(f"{root}{os.sep}", "")


def _in(root: Path, filename: str) -> bool:
    """Whether a frame's file is in the bundle (``<frozen ...>`` frames are nowhere)."""
    return not filename.startswith("<") and Path(filename).resolve().is_relative_to(root)


def _where(root: Path, exc: BaseException) -> tuple[str | None, int]:
    """The innermost place in the bundle the failure came from (a syntax error's own)."""
    places = [
        (frame.filename, frame.lineno or 0) for frame in traceback.extract_tb(exc.__traceback__)
    ]
    if isinstance(exc, SyntaxError) and exc.filename:
        places.append((exc.filename, exc.lineno or 0))
    for filename, line in reversed(places):
        if _in(root, filename):
            return Path(filename).resolve().relative_to(root).as_posix(), line
    return None, 0


def main() -> None:
    module, attr = sys.argv[1], sys.argv[2]
    root = Path.cwd().resolve()
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # what the app prints must not garble the report
        report = probe(root, module, attr)
    out.write(json.dumps(report) + "\n")
    out.flush()
    os._exit(0)  # threads the app started on import must not keep this process alive


if __name__ == "__main__":
    main()
