"""Runs ASGI apps inside an executor: one ``CODEC_HTTP`` invocation is one HTTP request.

The request arrives as the invocation's arguments (an ``HttpRequest``) and
the answer leaves as its result (an ``HttpResponse``), so HTTP apps travel the
same direct-call path as functions: routing, versions and lost-node detection
come with it. Only a streamed body takes a side road: each chunk is
published as it is produced to a subject the gateway subscribed to before it
sent the request, so a slow stream reaches the browser while it runs.

An app's lifespan starts before its first request in this executor and stops
when the executor does, as an ASGI server would run it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from nats.aio.client import Client as NATS

from superpose import protocol

log = logging.getLogger("superpose.asgi")

Message = MutableMapping[str, Any]
App = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

ASGI = {"version": "3.0", "spec_version": "2.3"}
"""Spec 2.3: Starlette then listens for ``http.disconnect``, which ``receive`` sends
only once the response is over, instead of relying on send errors (2.4)."""
SHUTDOWN_WAIT_S = 1.0
"""How long an app's lifespan shutdown may take when the executor stops (the agent
kills executors that take more than 2 s to go)."""


class AppFailed(Exception):
    """The app raised, or ended, before it had answered the request."""


class LifespanFailed(Exception):
    """The app reported ``lifespan.startup.failed``: it cannot serve requests here."""


class AsgiRunner:
    """The ASGI apps of one executor, and their lifespans."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._lifespans: dict[tuple[str, str], _Lifespan] = {}

    async def serve(
        self, app: App, inv: protocol.Invocation, raw: protocol.Buffer, reply: str
    ) -> bytes:
        """Run one request through ``app``; returns the encoded ``HttpResponse``."""
        request = protocol.HttpRequest.decode(raw)
        state = await self._started(app, (inv.module, inv.qualname))
        client = protocol.client_of_reply(reply)
        stream_to = protocol.http_stream_subject(client, inv.id) if client else None
        responder = _Responder(self.nc, stream_to)
        where = f"{inv.app}: {request.method} {request.path} ({inv.id})"
        try:
            await app(_scope(request, state), _receiver(request, responder.over), responder.send)
        except Exception as exc:
            _report(f"{where} raised", exc)
            if not responder.complete:
                raise
        finally:
            responder.over.set()
        if not responder.complete:
            why = "never started a response" if not responder.status else "left its response open"
            raise AppFailed(f"{where} returned but {why}")
        return responder.answer().encode()

    async def _started(self, app: App, key: tuple[str, str]) -> dict[str, Any]:
        lifespan = self._lifespans.get(key)
        if lifespan is None:
            lifespan = self._lifespans[key] = _Lifespan(app, f"{key[0]}:{key[1]}")
        try:
            return await lifespan.started()
        except LifespanFailed:  # the next request tries again: the cause may pass (a database)
            if self._lifespans.get(key) is lifespan:
                del self._lifespans[key]
            raise

    async def shutdown(self) -> None:
        """Let every app run its shutdown, briefly: the executor is going away."""
        await asyncio.gather(*(lifespan.stop() for lifespan in self._lifespans.values()))


def _scope(request: protocol.HttpRequest, state: dict[str, Any]) -> Message:
    return {
        "type": "http",
        "asgi": dict(ASGI),
        "http_version": request.http_version,
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.raw_path,
        "query_string": request.query,
        "root_path": request.root_path,
        "headers": [(name, value) for name, value in request.headers],
        "client": tuple(request.client) if request.client else None,
        "server": tuple(request.server) if request.server else None,
        "state": dict(state),
        "extensions": {},
    }


def _receiver(
    request: protocol.HttpRequest, over: asyncio.Event
) -> Callable[[], Awaitable[Message]]:
    """The whole body at once, then ``http.disconnect`` when the response is over."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await over.wait()
        return {"type": "http.disconnect"}

    return receive


class _Responder:
    """The app's ``send``: keeps a whole body, or publishes a streamed one part by part.

    A body is streamed from its first ``more_body`` chunk on; one that comes in a
    single message (most responses) travels whole in the invocation's result.
    """

    def __init__(self, nc: NATS, stream_to: str | None) -> None:
        self.nc = nc
        self.stream_to = stream_to
        self.status = 0
        self.headers: list[list[bytes]] = []
        self.body: list[bytes] = []
        self.parts = 0
        self.complete = False
        self.over = asyncio.Event()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.status:
                raise RuntimeError("the app sent http.response.start twice")
            self.status = int(message["status"])
            self.headers = [[bytes(k), bytes(v)] for k, v in message.get("headers", ())]
        elif kind == "http.response.body":
            if not self.status or self.complete:
                raise RuntimeError(f"the app sent {kind} outside a response")
            await self._body(bytes(message.get("body", b"")), bool(message.get("more_body")))

    async def _body(self, chunk: bytes, more: bool) -> None:
        if self.stream_to is not None and (more or self.parts):
            await self._publish(chunk)
        else:
            self.body.append(chunk)
        if not more:
            self.complete = True
            self.over.set()

    async def _publish(self, chunk: bytes) -> None:
        assert self.stream_to is not None
        if not chunk and self.parts:
            return
        step = protocol.HTTP_PART_MAX_BYTES
        for start in range(0, max(len(chunk), 1), step):
            part = protocol.HttpPart(self.parts, chunk[start : start + step])
            if self.parts == 0:
                part.status, part.headers = self.status, self.headers
            await self.nc.publish(self.stream_to, part.encode())
            self.parts += 1

    def answer(self) -> protocol.HttpResponse:
        body = b"".join(self.body)
        return protocol.HttpResponse(self.status, self.headers, body, self.parts)


class _Lifespan:
    """One app's ASGI lifespan in this executor: started once, before its first request.

    Apps without lifespan support (they raise on the scope, or return at once)
    are served without it, as uvicorn's ``lifespan="auto"`` does.
    """

    def __init__(self, app: App, name: str) -> None:
        self.name = name
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = loop.create_future()
        self._stopped: asyncio.Future[None] = loop.create_future()
        self._inbox.put_nowait({"type": "lifespan.startup"})
        # A fresh context: the request that happened to start it must not own its prints.
        self._task = loop.create_task(self._run(app), context=contextvars.Context())

    async def started(self) -> dict[str, Any]:
        await asyncio.shield(self._ready)
        return self.state

    async def _run(self, app: App) -> None:
        scope: Message = {"type": "lifespan", "asgi": dict(ASGI), "state": self.state}
        try:
            await app(scope, self._inbox.get, self._send)
        except Exception as exc:
            if not self._ready.done():
                _note(
                    f"{self.name} does not support the ASGI lifespan ({exc!r}); serving without it"
                )
            else:
                _report(f"{self.name} lifespan raised", exc)
        finally:
            _settle(self._ready)
            _settle(self._stopped)

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            _settle(self._ready)
        elif kind == "lifespan.startup.failed":
            why = str(message.get("message", "")).strip()
            _report(f"{self.name} lifespan startup failed: {why}", None)
            # Starlette's message is a whole traceback: requests get its last line.
            last = why.splitlines()[-1] if why else "no reason given"
            if not self._ready.done():
                self._ready.set_exception(LifespanFailed(f"{self.name} failed to start: {last}"))
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            _settle(self._stopped)

    async def stop(self) -> None:
        if self._ready.done() and self._ready.exception() is None and not self._task.done():
            self._inbox.put_nowait({"type": "lifespan.shutdown"})
            await asyncio.wait({self._stopped}, timeout=SHUTDOWN_WAIT_S)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _report(what: str, exc: BaseException | None) -> None:
    """To the node's executors.log, and to the app's logs when a request is running."""
    text = what if exc is None else f"{what}:\n{_app_traceback(exc)}"
    _note(text.rstrip())
    log.error("%s", text.rstrip())


def _app_traceback(exc: BaseException) -> str:
    """From the app's first frame on: this module's own frame is noise."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def _note(text: str) -> None:
    """A line for the node's executors.log (the executor's own stderr)."""
    if sys.__stderr__ is not None:
        print(text, file=sys.__stderr__, flush=True)
