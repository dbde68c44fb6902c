"""The one way superpose waits and tries again: a ``Backoff`` policy and ``retry``.

Every loop that retries a lattice operation (storing results, persisting
envelopes, restarting a KV watch, writing an object, pulling a chunk) and every
pause before a retried invocation takes its pause from a ``Backoff``, so the
policies are declared where they apply, with units, and read the same way.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Pauses between attempts: ``first_s``, then each ``factor`` times the one before,
    at most ``max_s``; with ``jitter`` j, a pause is drawn from [(1 - j) · p, p] so
    that many failing at once do not all come back at once."""

    first_s: float
    factor: float = 1.0
    max_s: float = math.inf
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.factor < 1 or self.max_s < 0 or not 0 <= self.jitter <= 1:
            raise ValueError(f"not a backoff: {self}")

    def pause_s(self, failures: int) -> float:
        """The pause after the ``failures``-th failure in a row (1 for the first)."""
        pause = min(self.max_s, self.first_s * self.factor ** max(0, failures - 1))
        if self.jitter:
            pause *= random.uniform(1 - self.jitter, 1.0)
        return pause


THROUGH_ELECTION = Backoff(0.1, factor=2, max_s=0.5, jitter=0.5)
"""Between tries of what a NATS failover refuses: a stream whose server died has no
leader for the 4-9 s NATS's Raft takes to elect one, and every try meanwhile fails at
once. Short pauses land the first try the new leader can take; the jitter keeps the
processes that failed together out of step when they come back."""


async def retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    attempts: int | None = None,
    within_s: float | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    on_failure: Callable[[BaseException, int], None] | None = None,
) -> T:
    """``attempt()``'s result, trying again after each failure of a ``retry_on`` kind.

    Gives up, raising the last failure, after ``attempts`` tries or once
    ``within_s`` seconds have passed (neither: never). ``on_failure(error, n)`` hears
    each failure that will be tried again (to log it). Other exceptions, and
    cancellation, go straight through.
    """
    deadline = None if within_s is None else time.monotonic() + within_s
    failures = 0
    while True:
        try:
            return await attempt()
        except retry_on as error:
            failures += 1
            out_of_tries = attempts is not None and failures >= attempts
            if out_of_tries or (deadline is not None and time.monotonic() >= deadline):
                raise
            if on_failure is not None:
                on_failure(error, failures)
        await asyncio.sleep(backoff.pause_s(failures))
