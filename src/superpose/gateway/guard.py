"""uvicorn's HTTP/1.1 protocol with the deadlines and the cap it lacks.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) and answers
503 past ``limit_concurrency``, but only once a whole request head has arrived: a
client that sends its headers a byte a second, or never sends any, holds its
connection and a file descriptor for as long as it likes. ``GuardedH11Protocol``
gives each connection one deadline per phase, read from h11's own state machine:

- ``IDLE`` (a request line and headers on their way): ``header_timeout_s`` from
  the connection's start or its previous answer;
- ``SEND_BODY`` (the body on its way): ``body_timeout_s`` from the end of the
  headers, in total, so trickled bytes do not extend it;
- anything else (the app is answering): no deadline here; the function's timeout
  bounds it.

Past a deadline the client gets a 408 (when no answer has begun) and the
connection is closed. At ``max_connections`` a new connection takes the place of
the one that has waited longest for its headers (nothing has started on it, so
nothing is lost but a slow client's turn); when none is waiting it is answered
503 and closed at once, so the cap holds without queueing descriptors.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from superpose.gateway.limits import Limits

HEADERS, BODY = "headers", "body"
_PHASES = {h11.IDLE: HEADERS, h11.SEND_BODY: BODY}


class GuardedH11Protocol(H11Protocol):
    """One connection, cut off when its client is too slow; see the module's text."""

    limits: ClassVar[Limits] = Limits()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.phase: str | None = None
        self.phase_started = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self._evict_one():
            self._refused = True
            transport.write(_answer(503, "the gateway is at its connection limit; retry shortly"))
            transport.close()
            return
        super().connection_made(transport)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:  # never counted, nothing to tidy
            return
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # bytes already read when it was refused
            return
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def _watch(self) -> None:
        """Start the phase's deadline when h11 says the phase changed; a phase that
        goes on keeps the deadline it started with."""
        phase = None if self.transport.is_closing() else _PHASES.get(self.conn.their_state)
        if phase == self.phase:
            return
        self._cancel_deadline()
        self.phase, self.phase_started = phase, self.loop.time()
        if phase is not None:
            timeout_s = (
                self.limits.header_timeout_s if phase == HEADERS else self.limits.body_timeout_s
            )
            self._deadline = self.loop.call_later(timeout_s, self._expire, phase, timeout_s)

    def _expire(self, phase: str, timeout_s: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if phase == HEADERS or (self.cycle is not None and not self.cycle.response_started):
            message = f"the request's {phase} did not arrive within {timeout_s:g} s"
            self.transport.write(_answer(408, message))
        self.transport.close()

    def _evict_one(self) -> bool:
        """Close the connection waiting longest for its headers; False if none is."""
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedH11Protocol)
            and c.phase == HEADERS
            and not c.transport.is_closing()
        ]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.phase_started)
        oldest._cancel_deadline()
        oldest.transport.close()
        self.connections.discard(oldest)  # its connection_lost comes later; its place is free now
        return True

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def protocol_with(limits: Limits) -> type[GuardedH11Protocol]:
    """The protocol class for one server (uvicorn builds it with a fixed signature, so
    its limits ride on the class)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def _answer(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer, written straight to the socket: the connection is
    closed after it, outside any request the app sees."""
    reason = {408: "Request Timeout", 503: "Service Unavailable"}[status]
    kind = {408: "RequestTimeout", 503: "TooManyConnections"}[status]
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body
