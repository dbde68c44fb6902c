"""The app's start-up hooks (``@sp.on_start``): each runs once in this executor, before
the first call that finds it registered (its module is imported by then: the call's
function was found first).

A hook that raises spoils the executor for good: it may have half-opened what it was
opening, and a second try in the same process could find that half. So its error is
kept, every later call here gets it without running, and the agent is told to close
this executor; the next call gets a fresh one, which runs the hook again.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

from superpose import protocol, runtime
from superpose.node.executor.reports import error_info

HOOK_FAILED = "StartHookFailed"


class StartHooks:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ran = 0
        """How many of ``runtime.start_hooks()`` have run here, in order."""
        self._lock = threading.Lock()
        """One runner at a time: a sync call and an async one may both find them pending."""
        self.failure: protocol.ErrorInfo | None = None
        """The error of the hook that failed: every call here fails with it."""

    def pending(self) -> bool:
        """Checked before every call: two reads while nothing is left to run."""
        return self.failure is not None or self._ran < len(runtime.start_hooks())

    def run(self) -> protocol.ErrorInfo | None:
        """Run the hooks not yet run, in a worker thread (never on the loop: a hook may
        take long, and an async one runs on the loop meanwhile). The failure, if any."""
        with self._lock:
            hooks = runtime.start_hooks()
            while self.failure is None and self._ran < len(hooks):
                hook = hooks[self._ran]
                self._ran += 1
                try:
                    outcome = hook()
                    if inspect.isawaitable(outcome):
                        asyncio.run_coroutine_threadsafe(_awaited(outcome), self._loop).result()
                except BaseException as exc:  # whatever it raised spoils this executor
                    self.failure = _failed(hook, exc)
            return self.failure


async def _awaited(outcome: Any) -> None:
    await outcome


def _failed(hook: runtime.StartHook, exc: BaseException) -> protocol.ErrorInfo:
    """Kind ``prepare``, naming the hook and what it raised, with its traceback."""
    raised = error_info(exc)
    message = f"start-up hook {runtime.hook_name(hook)} failed: {raised.type}: {raised.message}"
    return protocol.ErrorInfo(protocol.ERR_PREPARE, HOOK_FAILED, message, raised.traceback)
