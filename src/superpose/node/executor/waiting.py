"""A call waiting for its arguments' objects gives its slot back after a while.

Most Ref arguments arrive in milliseconds (cached, or pulled from their holder). One
whose holder died is made again by running its producer (``lattice/lineage.py``), a
call that needs a slot; if every slot is held by calls waiting for that very object,
nothing would run it. So a call whose arguments are not there within
``ARGS_PATIENCE_S`` waits as a blocked parent does (``runtime.blocking``): its slot
goes back to the node, and it takes one again when its arguments have come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from superpose import runtime

T = TypeVar("T")
ARGS_PATIENCE_S = 1.0
"""How long a call holds its slot while its arguments' objects are fetched."""


def wait_in_lane(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """From a lane thread: ``coro``'s result, run on ``loop``."""
    return runtime.wait_patiently(asyncio.run_coroutine_threadsafe(coro, loop), ARGS_PATIENCE_S)


async def wait_on_loop(coro: Coroutine[Any, Any, T]) -> T:
    """On the loop: ``coro``'s result."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=ARGS_PATIENCE_S)
    if done:
        return task.result()
    with runtime.blocking():
        return await task
