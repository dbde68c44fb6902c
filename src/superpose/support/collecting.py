"""Collecting what a pickle meets: a context variable holding a list for a block.

Refs and futures taken as inputs are found while arguments are pickled or unpickled
(their ``__reduce__`` and rebuild functions append to the list in force), so a call
with none pays nothing and no walk over the arguments is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def collecting(var: ContextVar[list[T] | None]) -> Iterator[list[T]]:
    """A fresh list in ``var`` for the block (and only its context), yielded."""
    found: list[T] = []
    token = var.set(found)
    try:
        yield found
    finally:
        var.reset(token)
