"""By-value bundles: functions that have no file a node could import.

A function defined in a Jupyter cell, in ``python -c`` or at the REPL lives in a
``__main__`` with no file, so script mode has nothing to pack. It travels as data
instead: cloudpickle pickles it with what it refers to (the globals it reads, the
functions it calls, the classes it builds), and the pickle goes into a bundle of
its own beside a three-line loader module. The bundle's digest is then the hash of
the pickled code: a redefined function is another bundle, an unchanged one is the
bundle nodes already cached, and the node fetches, caches and imports it like any
other bundle.

Every ``@sp.function`` the pickled one reaches is exposed by the loader too, under
its own name, so a call it makes to another notebook function runs in the bundle
the executor already hosts, as nested calls in script mode do.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from superpose.code.bundle import Bundle, from_files
from superpose.errors import SerializationError
from superpose.lattice import payload

APP = "main"
"""The app by-value functions run as (in subjects and logs), as a ``main.py`` script's do."""
LOADER_MODULE = "_superpose_by_value"
"""The module nodes import: it unpickles the functions into its own namespace."""
PICKLE_FILE = f"{LOADER_MODULE}.pkl"
LOADER = f'''"""Functions sent by value from a notebook or REPL (written by superpose)."""
import pathlib as _pathlib

import cloudpickle as _cloudpickle

globals().update(_cloudpickle.loads(_pathlib.Path(__file__).with_name("{PICKLE_FILE}").read_bytes()))
'''


def defined_interactively(fn: Any) -> bool:
    """True when ``fn``'s module has no source file: a notebook, ``python -c``, the REPL,
    ``python -`` (whose ``__file__`` is ``<stdin>``)."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    file = getattr(module, "__file__", None)
    return module is None or not file or not os.path.isfile(file)


# --- telling when a function must be packed again ------------------------------------


class GlobalsWatch:
    """The globals a function reads, to tell cheaply whether one was rebound since the
    function was last packed (a helper redefined in a later cell). A value changed in
    place is not seen: what a function captures is what it held when it was sent."""

    def __init__(self, fn: types.FunctionType) -> None:
        self._globals = fn.__globals__
        self._names = tuple(sorted(set(_names_read(fn.__code__))))
        self._seen: tuple[Any, ...] | None = None

    def changed(self) -> bool:
        now = tuple(map(self._globals.get, self._names))
        seen = self._seen
        if seen is not None and all(a is b for a, b in zip(now, seen, strict=True)):
            return False
        self._seen = now
        return True


def _names_read(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # nested functions, lambdas, comprehensions
            yield from _names_read(const)


# --- packing -------------------------------------------------------------------------


@dataclass
class _Packing:
    """The shipped functions one bundle holds, in the order the pickler reached them."""

    names: dict[int, str] = field(default_factory=dict)
    entries: dict[str, Any] = field(default_factory=dict)

    def add(self, obj: Any, name: str) -> str:
        found = self.names.get(id(obj))
        if found is None:
            found, n = name, 1
            while found in self.entries:
                n += 1
                found = f"{name}_{n}"
            self.names[id(obj)] = found
            self.entries[found] = obj
        return found


_packing: ContextVar[_Packing | None] = ContextVar("superpose_by_value_packing", default=None)


def name_in_bundle(obj: Any, name: str) -> str | None:
    """For a shipped function's ``__getstate__``: its name in the bundle being packed
    (it joins the bundle if it is new), or None when no bundle is (an argument)."""
    packing = _packing.get()
    return packing.add(obj, name) if packing is not None else None


def pack(obj: Any, name: str, fn: types.FunctionType) -> bytes:
    """The pickle a by-value bundle holds: ``obj`` under ``name``, and every shipped
    function it reaches under its own. ``fn`` is the plain function, to say what in
    it could not be pickled."""
    _register_module(fn)
    packing = _Packing()
    packing.add(obj, name)
    token = _packing.set(packing)
    try:
        cloudpickle.dumps(obj)  # the first pass finds the shipped functions obj reaches
        return bytes(cloudpickle.dumps(packing.entries))
    except Exception as exc:
        raise SerializationError(unpicklable_message(fn, exc)) from exc
    finally:
        _packing.reset(token)


def _register_module(fn: types.FunctionType) -> None:
    """A module with no file is not ``__main__`` when code was exec'd into a module of its
    own; cloudpickle sends ``__main__``'s functions by value but would name this one's."""
    module = sys.modules.get(fn.__module__)
    if module is not None and fn.__module__ != "__main__":
        cloudpickle.register_pickle_by_value(module)


def bundle(pickled: bytes, root: Path, files: list[Path]) -> Bundle:
    """The loader, the pickle and ``files`` (local modules, included data) under ``root``."""
    found = dict(from_files(root, files).files.items())
    found[f"{LOADER_MODULE}.py"] = LOADER.encode()
    found[PICKLE_FILE] = pickled
    return Bundle(found)


# --- saying what could not be sent ---------------------------------------------------


def unpicklable_message(fn: types.FunctionType, exc: BaseException) -> str:
    what = _culprit(fn, set()) or f"{fn.__qualname__} could not be pickled ({_error(exc)})"
    return (
        f"cannot send {fn.__qualname__} by value (a function defined in a notebook or REPL "
        f"travels pickled): {what}. Create that value inside the function, or pass what "
        "it needs as arguments"
    )


def _culprit(fn: types.FunctionType, seen: set[int]) -> str | None:
    """What in ``fn`` cannot be pickled, following the notebook functions it uses."""
    seen.add(id(fn))
    for where, value in _captured(fn):
        inner = getattr(value, "__wrapped__", value)  # an @sp.function: look inside
        if isinstance(inner, types.FunctionType) and inner.__module__ == fn.__module__:
            found = None if id(inner) in seen else _culprit(inner, seen)
            if found is not None:
                return f"{fn.__qualname__} uses {where}, and {found}"
            continue
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            return f"{fn.__qualname__} uses {where}, a {payload.type_name(value)} ({_error(exc)})"
    return None


def _captured(fn: types.FunctionType) -> Iterator[tuple[str, Any]]:
    """What pickling ``fn`` sends besides its code: the globals it reads, the variables
    it closes over, its default arguments."""
    for name in sorted(set(_names_read(fn.__code__))):
        if name in fn.__globals__:
            yield f"the global {name!r}", fn.__globals__[name]
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        try:
            yield f"the variable {name!r} it closes over", cell.cell_contents
        except ValueError:  # a cell not filled yet
            continue
    for i, default in enumerate(fn.__defaults__ or ()):
        yield f"default argument #{i + 1}", default


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
