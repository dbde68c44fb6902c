"""Collecting what a pickle meets: a context variable holding a list for a block.

Refs and futures taken as inputs are found while arguments are pickled or unpickled
(their ``__reduce__`` and rebuild functions append to the list in force), so a call
with none pays nothing and no walk over the arguments is needed.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Generic, TypeVar

T = TypeVar("T")


class collecting(Generic[T]):  # named as a function: ``with collecting(var)``
    """A fresh list in ``var`` for the block (and only its context), yielded.

    A class, not ``@contextmanager``: every warm call enters several of these, and a
    generator-based one cost a handful of Python calls each.
    """

    __slots__ = ("_found", "_token", "_var")

    def __init__(self, var: ContextVar[list[T] | None]) -> None:
        self._var = var
        self._found: list[T] = []
        self._token: Token[list[T] | None] | None = None

    def __enter__(self) -> list[T]:
        self._token = self._var.set(self._found)
        return self._found

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        self._var.reset(self._token)
