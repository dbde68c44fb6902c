"""Reaching the client's event loop from any thread.

The client's work runs on one loop; the sync facade, futures' callbacks and user
threads hand work to it from outside. Blocking on that loop from its own thread
would freeze it, so that is refused with a fix the user can apply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from superpose.errors import UserError
from superpose.support.eventloop import on_loop

T = TypeVar("T")


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on ``loop`` from another thread and wait for it."""
    if on_loop(loop):
        coro.close()
        raise UserError(
            "a blocking superpose call was made on the event loop that serves it; "
            "in async code use `await f.remote.aio(...)` or `await f.spawn(...)`"
        )
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def fire(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> None:
    """Start a coroutine on ``loop`` from any thread, without waiting."""
    if on_loop(loop):
        loop.create_task(coro)
    else:
        asyncio.run_coroutine_threadsafe(coro, loop)
