"""``deploy --asgi MODULE:ATTR``: find and check an app's ASGI entry point.

The entry is registered as the reserved function ``protocol.HTTP_FUNCTION``
of the version, so HTTP requests reach it through the ordinary call path.
Unlike functions, an entry is imported once at deploy time, in a throwaway
process over a copy of the bundle: an app that cannot be imported would
otherwise be registered and fail on every request. Its dependencies must
therefore be installed where deploy runs.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from superpose import protocol
from superpose.code.bundle import Bundle
from superpose.code.discover import FunctionSpec, parse_module
from superpose.errors import BadRequestError, DeployError

IMPORT_CHECK_TIMEOUT_S = 60.0
_ENTRY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def parse_entry(entry: str) -> tuple[str, str]:
    """``main:app`` → (``main``, ``app``)."""
    if not _ENTRY_RE.match(entry):
        raise BadRequestError(
            f"--asgi {entry!r} is not MODULE:ATTR (e.g. main:app, or site.web:api for a package)"
        )
    module, _, attr = entry.partition(":")
    return module, attr


def module_file(bundle: Bundle, module: str) -> str:
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if candidate in bundle.files:
            return candidate
    raise DeployError(f"--asgi names module {module!r}, but the bundle has no {base}.py")


async def entry_spec(bundle: Bundle, entry: str) -> FunctionSpec:
    """The checked entry point as the function spec deploy registers."""
    module, attr = parse_entry(entry)
    path = module_file(bundle, module)
    await check_imports(bundle, module, attr)
    return FunctionSpec(
        name=protocol.HTTP_FUNCTION,
        module=module,
        qualname=attr,
        file=path,
        line=_defined_at(path, bundle.files[path], attr.split(".")[0]),
        is_async=True,
        options={"asgi": True},
    )


def _defined_at(path: str, source: bytes, name: str) -> int:
    """The line of the top-level statement that binds ``name`` (0 if none does visibly)."""
    for node in parse_module(path, source).body:
        if name in _bound_names(node):
            return node.lineno
    return 0


def _bound_names(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Import | ast.ImportFrom):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    return {t.id for t in targets if isinstance(t, ast.Name)}


async def check_imports(bundle: Bundle, module: str, attr: str) -> None:
    """Import the entry in a subprocess over a copy of the bundle; DeployError if it fails."""
    with tempfile.TemporaryDirectory(prefix="superpose-asgi-") as tmp:
        root = Path(tmp)
        for relpath, data in bundle.files.items():
            (root / relpath).parent.mkdir(parents=True, exist_ok=True)
            (root / relpath).write_bytes(data)
        report = await _probe(root, module, attr)
    if report.get("ok"):
        return
    entry = f"{module}:{attr}"
    where: str = report.get("file") or module_file(bundle, module)
    if "type" not in report:  # imported, but the entry is not an app
        line = _defined_at(where, bundle.files[where], attr.split(".")[0])
        raise DeployError(f"{_at(where, line)}: --asgi {entry}: {report['message']}")
    raise DeployError(
        f"{_at(where, report.get('line') or 0)}: importing {entry} failed: "
        f"{report['type']}: {report['message']}\n{report['traceback'].rstrip()}"
    )


def _at(path: str, line: int) -> str:
    return f"{path}:{line}" if line else path


async def _probe(root: Path, module: str, attr: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-B",
        "-m",
        "superpose.code.probe",
        module,
        attr,
        cwd=root,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), IMPORT_CHECK_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise DeployError(
            f"importing {module}:{attr} took more than {IMPORT_CHECK_TIMEOUT_S:g} s; "
            "does the module do work at import time that belongs in the app's lifespan?"
        ) from None
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        report: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise DeployError(
            f"importing {module}:{attr} ended the checking process "
            f"(exit status {process.returncode}): {err.decode(errors='replace').strip()[-2000:]}"
        ) from None
    return report
