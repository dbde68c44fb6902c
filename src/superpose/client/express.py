"""Which direct calls skip the node agent (see "Express calls" in docs/architecture.md).

A warm bundle's calls go straight to the executors hosting it, a couple at a
time: more would pile onto one executor while the queue group could spread
them over the nodes.
"""

from __future__ import annotations

import time
from collections import Counter

EXPRESS_MAX_OUT = 2
"""Unanswered express calls per bundle; more go to the queue group, which spreads
them over the nodes (an executor takes an express call only when idle)."""
EXPRESS_RETRY_S = 1.0
"""After no executor answered a bundle's express subject, how long to use the queue group."""


class ExpressRoutes:
    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._out: Counter[str] = Counter()
        """Express calls sent and not yet answered, by bundle digest."""
        self._cold: dict[str, float] = {}
        """Bundles no executor held warm at the last express try, until when to skip them."""

    def take(self, digest: str) -> bool:
        """Whether a call of this bundle goes express; if so it counts until ``release``."""
        if not self._enabled or self._out[digest] >= EXPRESS_MAX_OUT:
            return False
        cold_until = self._cold.get(digest)
        if cold_until is not None and time.monotonic() <= cold_until:
            return False
        self._out[digest] += 1
        return True

    def release(self, digest: str) -> None:
        """An express call was answered (or never left)."""
        self._out[digest] -= 1

    def went_cold(self, digest: str) -> None:
        """No executor holds the bundle warm: the queue group's nodes load it meanwhile."""
        self._cold[digest] = time.monotonic() + EXPRESS_RETRY_S

    def forget_cold(self) -> None:
        """Try every bundle express again at once (tests skip the cold pause with it)."""
        self._cold.clear()
