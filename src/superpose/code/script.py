"""Script mode: pack the caller's own code so functions run without a deploy.

The bundle is the module that defines the function plus every local module it
imported from the same project folder (found by walking ``sys.modules``), so
helpers next to the script travel with it, and so do the data files its
functions name with ``include=`` (``include.py``). Installed packages, the
standard library and superpose itself are never packed: nodes have them.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from types import ModuleType

from superpose.code.bundle import Bundle, from_files
from superpose.code.include import DECLARED, included_files


def _installed_roots() -> list[Path]:
    roots = {Path(p).resolve() for p in sysconfig.get_paths().values()}
    roots |= {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    roots.add(Path(__file__).resolve().parents[1])  # superpose itself
    return sorted(roots)


def _under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def project_root(module: ModuleType) -> Path:
    """The folder the module's top-level package (or the script) lives in."""
    file = Path(module.__file__ or "").resolve()
    depth = module.__name__.count(".") if module.__name__ != "__main__" else 0
    if file.name == "__init__.py":
        depth += 1
    return file.parents[depth]


def local_modules(root: Path) -> dict[str, Path]:
    """Module name → file, for the modules loaded from under ``root`` that nodes lack."""
    installed = _installed_roots()
    files = {}
    for name, module in sys.modules.copy().items():  # atomic: other threads import too
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        path = Path(file).resolve()
        if not _under(path, root) or any(_under(path, r) for r in installed if r != root):
            continue
        if any(part in {".venv", "venv", "site-packages"} for part in path.parts):
            continue
        files[name] = path
    return files


def module_name_in_bundle(module: ModuleType, root: Path) -> str:
    """How a node imports the module: ``__main__`` becomes its file's stem."""
    if module.__name__ != "__main__":
        return module.__name__
    return (
        Path(module.__file__ or "main.py")
        .resolve()
        .relative_to(root)
        .with_suffix("")
        .as_posix()
        .replace("/", ".")
    )


def bundle_for(module_name: str) -> tuple[Bundle, Path]:
    """The bundle for a module: it, the local modules loaded so far and the data files
    their functions declared with ``include=``."""
    module = sys.modules[module_name]
    root = project_root(module)
    modules = local_modules(root)
    modules[module_name] = Path(module.__file__ or "").resolve()
    files = [*modules.values(), *included_files(root, DECLARED.of(modules))]
    return from_files(root, files), root
