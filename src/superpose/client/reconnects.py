"""Noticing that the client's connection reconnected, so that what may have been lost
with its server is looked for at once rather than at the next periodic check.

Read from nats-py's reconnect count, not its ``reconnected_cb``: that is one callback,
set by whoever made the connection, and executors and the gateway hand the client a
connection they made. Reading a counter costs nothing next to the checks it starts.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS


class Reconnects:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._seen = self._count()

    def _count(self) -> int:
        return int(self._nc.stats.get("reconnects", 0))

    def happened(self) -> bool:
        """The connection reconnected since the last time this was asked."""
        count = self._count()
        new, self._seen = count != self._seen, count
        return new
