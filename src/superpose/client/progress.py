"""A progress bar for ``map`` and the CLI, where someone is watching."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from superpose import runtime


@contextmanager
def progress_bar(total: int | None, label: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar on an interactive terminal; nothing otherwise (on a node,
    output goes to the caller's log, where a bar would be noise)."""
    if runtime.current() is not None or not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
