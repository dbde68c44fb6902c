"""Finding a bundle's functions by (module, qualname), and describing them to the agent.

Only the executor imports user code. A module missing from the bundle is "not
found"; a module that fails on an import of its own (a package the node lacks)
is the user's error, reported as raised with its traceback.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

from superpose import protocol
from superpose.errors import UserError
from superpose.node.executor.reports import error_info


class FunctionNotFound(LookupError):
    """The bundle lacks the module or name an invocation asks for."""


class Functions:
    """The functions this executor has imported, by (module, qualname)."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], Callable[..., Any]] = {}

    def get(self, module: str, qualname: str) -> Callable[..., Any]:
        key = (module, qualname)
        found = self._found.get(key)
        if found is None:
            target: Any = _import_bundle_module(module)
            for part in qualname.split("."):
                if not hasattr(target, part):
                    raise FunctionNotFound(f"{module} has no function {qualname!r}")
                target = getattr(target, part)
            found = getattr(target, "local", target)
            if not callable(found):
                raise TypeError(f"{module}.{qualname} is not callable")
            cloudpickle.register_pickle_by_value(sys.modules[module])
            self._found[key] = found
        return found

    def idempotent(self, module: str, qualname: str) -> bool:
        """Whether its decorator declared it safe to run twice (``idempotent=True``):
        lineage runs it again to remake an object it put that was lost."""
        options = getattr(_wrapper_of(module, qualname), "options_", None)
        return bool(getattr(options, "idempotent", False))

    def describe(self, ask: protocol.Describe) -> protocol.Described:
        """Sync or async, and the function's own limits (timeout, memory, concurrency);
        or why it cannot be loaded."""
        reply = protocol.Described(ask.key)
        try:
            fn = self.get(ask.module, ask.qualname)
            wrapper = _wrapper_of(ask.module, ask.qualname)
            reply.meta = {
                "is_async": is_async(fn),
                **(wrapper.node_options() if wrapper is not None else {}),
            }
        except BaseException as exc:
            kind = protocol.ERR_NOT_FOUND if isinstance(exc, FunctionNotFound) else None
            reply.error = error_info(exc, kind or protocol.ERR_RAISED)
        return reply


def is_async(fn: Any) -> bool:
    """Async functions, and objects whose ``__call__`` is async: ASGI apps like FastAPI's
    run on the loop too, where the agent counts them against ``concurrency``, not slots."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def top_level_modules(root: Path) -> set[bytes]:
    """The bundle's own top-level modules: values referring to them travel by value."""
    names = {p.stem for p in root.glob("*.py")} | {
        p.parent.name for p in root.glob("*/__init__.py")
    }
    return {name.encode() for name in names}


def _wrapper_of(module: str, qualname: str) -> Any:
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target if hasattr(target, "node_options") else None


def _import_bundle_module(module: str) -> Any:
    """Import a module of the bundle; only its own absence counts as "not found"."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise FunctionNotFound(f"the bundle has no module {module!r}") from exc
        raise
    except UserError as exc:  # e.g. a script's driver code running on import
        raise UserError(
            f"importing {module} on a node made superpose calls ({exc.message}); code that "
            'drives a script belongs under `if __name__ == "__main__":`'
        ) from exc
