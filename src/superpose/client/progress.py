"""A progress bar for ``map``, ``gather`` and the CLI, where someone is watching.

In a terminal it is a rich bar on stderr that vanishes when the work is done; in
a Jupyter notebook it is an HTML ``<progress>`` element updated in place under
the cell (no widget library needed), left showing the final count. Nowhere
else: piped output, logs and code running on a node get no bar.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from superpose import runtime

SHOW_AFTER_S = 0.5
"""Work done sooner shows no bar: a quick ``gather`` of two calls should not flash one."""
NOTEBOOK_EVERY_S = 0.1
"""Notebook updates are messages to the browser: at most this often."""

Advance = Callable[[], None]


@contextmanager
def progress_bar(total: int | None, label: str, *, enabled: bool = True) -> Iterator[Advance]:
    """``advance()`` once per finished item. ``enabled=False`` (``progress=False``)
    turns it off."""
    if not enabled or runtime.current() is not None:
        yield _nothing
    elif _in_notebook():
        with _notebook_bar(total, label) as advance:
            yield advance
    elif sys.stderr.isatty():
        with _terminal_bar(total, label) as advance:
            yield advance
    else:
        yield _nothing


def _nothing() -> None:
    pass


def _in_notebook() -> bool:
    """A Jupyter kernel (IPython's ZMQ shell), not a plain IPython terminal."""
    shell_module = sys.modules.get("IPython")
    if shell_module is None or "ipykernel" not in sys.modules:
        return False
    shell = shell_module.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


@contextmanager
def _terminal_bar(total: int | None, label: str) -> Iterator[Advance]:
    """A rich bar, started by a timer once the work has taken ``SHOW_AFTER_S``."""
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total)
    lock = threading.Lock()
    shown = False

    def show() -> None:
        nonlocal shown
        with lock:
            if not shown:
                shown = True
                bar.start()

    timer = threading.Timer(SHOW_AFTER_S, show)
    timer.daemon = True
    timer.start()
    try:
        yield lambda: bar.advance(task)
    finally:
        timer.cancel()
        with lock:
            if shown:
                bar.stop()
            shown = True  # a timer that fired late must not start it now


@contextmanager
def _notebook_bar(total: int | None, label: str) -> Iterator[Advance]:
    """An HTML progress element under the running cell, updated from the thread that
    waits (output from other threads can land in another cell)."""
    display = importlib.import_module("IPython.display").display
    started = time.monotonic()
    done = 0
    handle: Any = None
    last = 0.0

    def render() -> dict[str, str]:
        elapsed = time.monotonic() - started
        count = f"{done}/{total}" if total is not None else f"{done}"
        text = f"{label}: {count} in {elapsed:.1f} s"
        bar = f'<progress value="{done}" max="{total}"></progress>' if total else ""
        return {"text/plain": text, "text/html": f"{bar} <code>{_escape(text)}</code>"}

    def advance() -> None:
        nonlocal done, handle, last
        done += 1
        now = time.monotonic()
        if now - started < SHOW_AFTER_S or now - last < NOTEBOOK_EVERY_S:
            return
        last = now
        if handle is None:
            handle = display(render(), raw=True, display_id=True)
        else:
            handle.update(render(), raw=True)

    try:
        yield advance
    finally:
        if handle is not None:
            handle.update(render(), raw=True)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
