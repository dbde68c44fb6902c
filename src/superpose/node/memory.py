"""An executor's memory limit: its resident size, polled while a call with a limit runs."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from superpose.node.executor_process import ExecutorProcess

MEMORY_POLL_S = 0.05
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


async def watch_memory(executor: ExecutorProcess) -> None:
    """Kill the executor once it uses more than the lowest limit of its calls."""
    while executor.process.returncode is None:
        limits = [c.memory_bytes for c in executor.calls.values() if c.memory_bytes]
        if limits:
            rss = rss_bytes(executor.watched_pid)
            if rss > min(limits):
                executor.condemn(
                    (
                        "memory",
                        f"memory limit of {min(limits) // 2**20} MiB exceeded "
                        f"({rss // 2**20} MiB in use); executor process killed",
                    )
                )
                return
        await asyncio.sleep(MEMORY_POLL_S)


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0
