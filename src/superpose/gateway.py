"""The HTTP gateway: JSON in, JSON out, in front of the lattice.

User errors map to 4xx (bad body 400, unknown function 404, body too big
413), a function that raised or crashed to 500, a timeout to 504, no node to
503. Results are passed through as the JSON bytes the node produced.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from superpose import protocol
from superpose.client import Client
from superpose.config import MAX_HTTP_BODY_BYTES
from superpose.errors import (
    BadRequestError,
    CallTimeoutError,
    NoNodesError,
    NotFoundError,
    RemoteError,
    SuperposeError,
)
from superpose.registry import split_name
from superpose.status import lattice_status

VERSION_HEADER = "x-superpose-version"

_REMOTE_STATUS = {
    protocol.ERR_TIMEOUT: 504,
    protocol.ERR_NOT_FOUND: 404,
    protocol.ERR_BAD_REQUEST: 400,
}


class BodyTooLarge(Exception):
    pass


def _error(status: int, type_name: str, message: str, traceback: str = "") -> JSONResponse:
    body: dict[str, Any] = {"type": type_name, "message": message}
    if traceback:
        body["traceback"] = traceback
    return JSONResponse({"error": body}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_call_body(body: bytes) -> bytes:
    """Validate ``{"args": [...], "kwargs": {...}}`` and return it re-encoded."""
    if not body.strip():
        return b'{"args": [], "kwargs": {}}'
    try:
        parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise BadRequestError(
            'request body must be a JSON object: {"args": [...], "kwargs": {...}}'
        )
    unknown = set(parsed) - {"args", "kwargs"}
    if unknown:
        raise BadRequestError(
            f"unknown field(s) in request body: {', '.join(sorted(unknown))} "
            '(expected "args" and "kwargs")'
        )
    args, kwargs = parsed.get("args", []), parsed.get("kwargs", {})
    if not isinstance(args, list):
        raise BadRequestError('"args" must be a JSON array')
    if not isinstance(kwargs, dict):
        raise BadRequestError('"kwargs" must be a JSON object')
    return json.dumps({"args": args, "kwargs": kwargs}).encode()


def _error_response(exc: Exception, max_body_bytes: int) -> JSONResponse:
    """The HTTP answer for everything a call can fail with."""
    if isinstance(exc, BodyTooLarge):
        return _error(413, "PayloadTooLarge", f"request body exceeds {max_body_bytes} bytes")
    if isinstance(exc, RemoteError):
        status = _REMOTE_STATUS.get(exc.kind, 500)
        return _error(status, exc.type, exc.remote_message, exc.traceback)
    if isinstance(exc, SuperposeError):
        for kind, status in _USER_STATUS:
            if isinstance(exc, kind):
                return _error(status, kind.__name__.removesuffix("Error"), exc.message)
        return _error(500, type(exc).__name__, exc.message)
    raise exc


_USER_STATUS: list[tuple[type[SuperposeError], int]] = [
    (NotFoundError, 404),
    (BadRequestError, 400),
    (CallTimeoutError, 504),
    (NoNodesError, 503),
]


def create_app(lattice_url: str, *, max_body_bytes: int = MAX_HTTP_BODY_BYTES) -> Starlette:
    state: dict[str, Client] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        client = await Client.open(lattice_url)
        await client.registry()
        state["client"] = client
        try:
            yield
        finally:
            await client.aclose()

    async def call(request: Request) -> Response:
        client = state["client"]
        try:
            app, fn, version = split_name(request.path_params["name"])
            version = request.headers.get(VERSION_HEADER) or version
            body = _parse_call_body(await _read_body(request, max_body_bytes))
            target = (await client.registry()).resolve(app, fn, version)
            result = await client.call_json(target, body)
        except (BodyTooLarge, SuperposeError) as exc:
            return _error_response(exc, max_body_bytes)
        return Response(b'{"result": ' + result + b"}", media_type="application/json")

    async def status(_: Request) -> Response:
        return JSONResponse(await lattice_status(state["client"]))

    async def health(_: Request) -> Response:
        return JSONResponse({"ok": True})

    async def openapi(_: Request) -> Response:
        return JSONResponse(OPENAPI)

    return Starlette(
        routes=[
            Route("/v1/call/{name:str}", call, methods=["POST"]),
            Route("/v1/status", status, methods=["GET"]),
            Route("/v1/health", health, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def serve(
    lattice_url: str,
    host: str,
    port: int,
    *,
    max_body_bytes: int = MAX_HTTP_BODY_BYTES,
    until: Coroutine[Any, Any, None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM or ``until`` returns; requests in flight are finished."""
    import uvicorn

    app = create_app(lattice_url, max_body_bytes=max_body_bytes)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    )
    watch = None
    if until is not None:
        watch = asyncio.create_task(until)
        watch.add_done_callback(lambda _: setattr(server, "should_exit", True))
    try:
        await server.serve()
    finally:
        if watch is not None:
            watch.cancel()


_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "traceback": {"type": "string"},
            },
            "required": ["type", "message"],
        }
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "superpose gateway", "version": "1"},
    "paths": {
        "/v1/call/{name}": {
            "post": {
                "summary": "Call a deployed function and wait for its result",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "APP.FN or APP.FN@VERSION",
                    },
                    {
                        "name": "X-Superpose-Version",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "version digest or alias",
                    },
                ],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "args": {"type": "array"},
                                    "kwargs": {"type": "object"},
                                },
                                "additionalProperties": False,
                            }
                        }
                    }
                },
                "responses": {
                    "200": {
                        "description": "the result",
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"result": {}}}
                            }
                        },
                    },
                    **{
                        code: {
                            "description": why,
                            "content": {"application/json": {"schema": _ERROR}},
                        }
                        for code, why in [
                            ("400", "malformed body"),
                            ("404", "unknown app, function or version"),
                            ("413", "body over the limit"),
                            ("500", "the function raised or crashed"),
                            ("503", "no node is serving"),
                            ("504", "the function timed out"),
                        ]
                    },
                },
            }
        },
        "/v1/status": {
            "get": {
                "summary": "Nodes, apps and versions",
                "responses": {"200": {"description": "lattice state"}},
            }
        },
        "/v1/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
    },
}
