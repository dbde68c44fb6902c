"""The gateway's side of HTTP apps: ``/{app}/...`` forwarded to whichever node runs it.

A request becomes an ordinary direct invocation of the app's reserved
``http`` function (``CODEC_HTTP``), resolved like ``/v1/call`` resolves
functions, so versions, the ``X-Superpose-Version`` header and every other
routing rule apply unchanged. The answer is the invocation's result, except
for a streamed body: its parts arrive on ``_SP.<client>.s.<invocation id>``,
which one wildcard subscription, open before any request is sent, hands to
the request's queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from superpose import protocol
from superpose.client.client import Client
from superpose.client.futures import Future
from superpose.client.options import Options
from superpose.config import DEFAULT_TIMEOUT_S, WAIT_MARGIN_S
from superpose.errors import NotFoundError, RemoteError, SuperposeError
from superpose.registry.mirror import Target

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
TAIL_WAIT_S = 5.0
"""After the result, how long the parts it counts may still take to arrive: they were
published before it, so they are late only if they were lost."""
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Headers about one connection, not the message: the gateway's server sets its own."""


class StreamBroken(SuperposeError):
    """A streamed body lost a part or its node: the answer cannot be completed."""


class HttpApps:
    """Forwards requests to the apps deployed with ``--asgi``."""

    def __init__(self) -> None:
        self._client: Client | None = None
        self._sub: Subscription | None = None
        self._streams: dict[str, asyncio.Queue[protocol.HttpPart]] = {}

    @property
    def client(self) -> Client:
        if self._client is None:
            raise SuperposeError("the gateway has not started")
        return self._client

    async def start(self, client: Client) -> None:
        self._client = client
        self._sub = await client.nc.subscribe(
            protocol.http_stream_wildcard(client.id),
            cb=self._on_part,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()

    async def _on_part(self, msg: Msg) -> None:
        queue = self._streams.get(msg.subject.rsplit(".", 1)[-1])
        if queue is None:  # its request has ended (the client left)
            return
        try:
            queue.put_nowait(protocol.HttpPart.decode(msg.data))
        except protocol.ProtocolError:  # unreadable: the gap it leaves ends that stream
            return

    async def resolve(
        self, app: str, version: str | None, ctx: protocol.CallContext | None = None
    ) -> Target:
        """The app's HTTP entry in the version asked for; 404 naming what is missing."""
        if app == "v1":
            raise NotFoundError("no such gateway endpoint: the API is described at /openapi.json")
        if not protocol.is_valid_name(app):
            raise NotFoundError(f"no app named {app!r} is deployed")
        registry = await self.client.registry()
        try:
            target = self.client.resolve(app, protocol.HTTP_FUNCTION, version, ctx)
        except NotFoundError:
            target = None
        if target is None or not target.options.get("asgi"):
            found = registry.version(app, version)  # raises for an unknown app or version
            raise NotFoundError(
                f"app {app} (version {found.id[:12]}) has no HTTP app: deploy it with "
                "`superpose deploy PATH --asgi MODULE:ATTR`"
            )
        return target

    async def forward(
        self,
        request: Request,
        target: Target,
        body: bytes,
        ctx: protocol.CallContext | None = None,
    ) -> Response:
        """Send the request to the app and answer with what it answers; its version
        context (session, pins) follows every call the app makes."""
        raw = _http_request(request, target.app, body).encode()
        future = self.client.submit_raw(target, raw, protocol.CODEC_HTTP, Options(), ctx)
        # Registered before any await: the invocation is published only after this.
        inv_id = future.invocation_id
        queue = self._streams[inv_id] = asyncio.Queue()
        timeout_s = float(target.options.get("timeout") or DEFAULT_TIMEOUT_S)
        exchange = _Exchange(future, queue, time.monotonic() + timeout_s + WAIT_MARGIN_S)
        future.add_done_callback(lambda _: self._forget_soon(inv_id, exchange))
        try:
            first = await exchange.first()
        except RemoteError as exc:
            raise _public(exc, target.app) from None
        if isinstance(first, protocol.HttpResponse) and not first.parts:
            return _whole(first)
        return _streamed(first, exchange.body(first))

    def _forget_soon(self, inv_id: str, exchange: _Exchange) -> None:
        """Drop a finished request's queue once its last parts can no longer arrive.

        Tied to the result, not to the response: a streamed body that is never
        read (the client left first) must not leave its queue or a waiting task behind.
        """
        loop = self.client.loop

        def forget() -> None:
            self._streams.pop(inv_id, None)
            exchange.stop_waiting()

        loop.call_soon_threadsafe(loop.call_later, 2 * TAIL_WAIT_S, forget)


class _Exchange:
    """One forwarded request: its result future and the parts of a streamed body."""

    def __init__(
        self, future: Future, queue: asyncio.Queue[protocol.HttpPart], deadline: float
    ) -> None:
        self.result: asyncio.Future[bytes] = asyncio.wrap_future(future)
        self.queue = queue
        self.deadline = deadline
        self.answer: protocol.HttpResponse | None = None
        self._next: asyncio.Task[protocol.HttpPart] | None = None

    async def first(self) -> protocol.HttpPart | protocol.HttpResponse:
        """The head of a streamed body, or the whole answer, whichever comes first."""
        try:
            got = await self._wait()
        finally:
            if self.result.done():  # answered or failed: no part is coming first
                self.stop_waiting()
        if got is None:
            self.stop_waiting()
            raise RemoteError(
                protocol.ERR_TIMEOUT, "DeadlineExceeded", "the app did not answer in time"
            )
        return got

    async def body(self, first: protocol.HttpPart | protocol.HttpResponse) -> AsyncIterator[bytes]:
        """The chunks of a streamed body, in order, until the answer counts them all."""
        seq = 0
        item: protocol.HttpPart | protocol.HttpResponse | None = first
        try:
            while item is not None:
                if isinstance(item, protocol.HttpPart):
                    if item.seq != seq:
                        raise StreamBroken(f"part {seq} of the response body was lost")
                    seq += 1
                    if item.body:
                        yield item.body
                if self.answer is not None and seq >= self.answer.parts:
                    return
                item = await self._wait()
            raise StreamBroken("the app stopped sending its response body in time")
        except RemoteError as exc:  # the headers are out: the server can only cut it short
            raise StreamBroken(
                f"the app failed mid-response: {exc.type}: {exc.remote_message}"
            ) from None
        finally:
            self.stop_waiting()
            self.result.cancel()

    def stop_waiting(self) -> None:
        """Cancel the pending read of the next part, if any (reading again starts another).
        A read that has already got its part is kept: that part is the next one."""
        if self._next is not None and not self._next.done():
            self._next.cancel()
            self._next = None

    async def _wait(self) -> protocol.HttpPart | protocol.HttpResponse | None:
        """The next part, or the answer when it is the next thing known; None past the
        deadline. A failed invocation raises its error."""
        if self._next is None:
            self._next = asyncio.ensure_future(self.queue.get())
        if self.answer is not None:  # only parts are left to come, and soon
            waits: set[asyncio.Future[Any]] = {self._next}
            timeout = TAIL_WAIT_S
        else:
            waits = {self._next, self.result}
            timeout = max(0.0, self.deadline - time.monotonic())
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self._next in done:
            part, self._next = self._next.result(), None
            return part
        if self.result in done:
            self.answer = protocol.HttpResponse.decode(self.result.result())
            return self.answer
        return None


def _public(exc: RemoteError, app: str) -> RemoteError:
    """An app's failure without its traceback: web clients get the type and message,
    the traceback stays in the node's logs."""
    if exc.kind != protocol.ERR_RAISED:
        return exc
    where = f"the node's executors.log and `superpose logs {app}`"
    return RemoteError(
        exc.kind, exc.type, f"{exc.remote_message} (traceback in {where})", node=exc.node
    )


def _http_request(request: Request, app: str, body: bytes) -> protocol.HttpRequest:
    scope = request.scope
    client, server = scope.get("client"), scope.get("server")
    return protocol.HttpRequest(
        method=request.method,
        path=scope["path"],
        raw_path=scope.get("raw_path") or scope["path"].encode(),
        query=scope.get("query_string", b""),
        root_path=f"{scope.get('root_path', '')}/{app}",
        headers=[[k, v] for k, v in scope["headers"] if k not in HOP_BY_HOP],
        body=body,
        scheme=scope.get("scheme", "http"),
        http_version=scope.get("http_version", "1.1"),
        client=list(client) if client else None,
        server=list(server) if server else None,
    )


def _headers(raw: list[list[bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in raw if k.lower() not in HOP_BY_HOP]


def _whole(answer: protocol.HttpResponse) -> Response:
    response = Response(answer.body, status_code=answer.status)
    headers = _headers(answer.headers)
    if answer.body and not any(k == b"content-length" for k, _ in headers):
        headers.append((b"content-length", str(len(answer.body)).encode()))
    response.raw_headers = headers
    return response


def _streamed(
    head: protocol.HttpPart | protocol.HttpResponse, chunks: AsyncIterator[bytes]
) -> Response:
    response = StreamingResponse(chunks, status_code=head.status)
    response.raw_headers = _headers(head.headers)
    return response
