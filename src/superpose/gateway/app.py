"""The HTTP gateway: JSON in, JSON out, in front of the lattice.

This module only composes: each endpoint lives in the module named for its job
(``calls``, ``invocations``, ``status``, ``openapi``, ``forward`` for HTTP apps),
``requests`` reads requests and ``errors`` turns failures into answers. What the
handlers share (the client, the HTTP apps, the body limit) is on ``app.state``,
set by the lifespan, so each handler is a plain function of its request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from superpose.client.client import Client
from superpose.config import MAX_HTTP_BODY_BYTES
from superpose.gateway.auth import TokenBook, TokenGate
from superpose.gateway.calls import call
from superpose.gateway.errors import routing_error
from superpose.gateway.forward import AppRoute, http_app
from superpose.gateway.http_apps import METHODS, HttpApps
from superpose.gateway.invocations import invocation_or_cancel, invoke
from superpose.gateway.limits import Limits
from superpose.gateway.openapi import openapi
from superpose.gateway.status import app_versions, health, status, trace


def create_app(lattice_url: str, *, max_body_bytes: int = MAX_HTTP_BODY_BYTES) -> Starlette:
    """The gateway as an ASGI app; it connects to the lattice when its lifespan starts.

    The ``/{app}`` routes come last and match only app names: an app's path never
    shadows the API, and a method the API does not take answers 405, not "no such app".
    """
    return Starlette(
        routes=[
            Route("/v1/call/{name:str}", call, methods=["POST"]),
            Route("/v1/invoke/{name:str}", invoke, methods=["POST"]),
            Route("/v1/invocations/{id:str}", invocation_or_cancel, methods=["GET", "DELETE"]),
            Route("/v1/status", status, methods=["GET"]),
            Route("/v1/apps/{app:str}", app_versions, methods=["GET"]),
            Route("/v1/traces/{id:str}", trace, methods=["GET"]),
            Route("/v1/health", health, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            AppRoute("/{app:str}", http_app, methods=METHODS),
            AppRoute("/{app:str}/{path:path}", http_app, methods=METHODS),
        ],
        exception_handlers={HTTPException: routing_error},
        middleware=[Middleware(TokenGate)],  # who may use which route: auth.RULES
        lifespan=_lifespan(lattice_url, max_body_bytes),
    )


def _lifespan(
    lattice_url: str, max_body_bytes: int
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """Open the client and read the registry before the first request, so a gateway
    that cannot reach the lattice fails at start-up instead of on every request."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = await Client.open(lattice_url)
        await client.registry()
        http_apps = HttpApps()
        token_book = TokenBook()
        await token_book.start(client.assets.tokens)
        app.state.tokens = token_book
        app.state.client = client
        app.state.http_apps = http_apps
        app.state.max_body_bytes = max_body_bytes
        await http_apps.start(client)
        try:
            yield
        finally:
            await http_apps.stop()
            await token_book.stop()
            await client.aclose()

    return lifespan


async def serve(
    lattice_url: str,
    host: str,
    port: int,
    *,
    max_body_bytes: int = MAX_HTTP_BODY_BYTES,
    limits: Limits | None = None,
    until: Coroutine[Any, Any, None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM or ``until`` returns; requests in flight are finished.
    Slow clients and the connection cap are ``server``'s and ``guard``'s business."""
    from superpose.gateway import server

    app = create_app(lattice_url, max_body_bytes=max_body_bytes)
    await server.run(app, host, port, limits or Limits(), until)
