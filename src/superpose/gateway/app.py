"""The HTTP gateway: JSON in, JSON out, in front of the lattice.

User errors map to 4xx (bad body 400, unknown function 404, body too big
413), a function that raised or crashed to 500, a timeout to 504, no node to
503. Results are passed through as the JSON bytes the node produced.

Durable invocations: ``POST /v1/invoke/{name}`` answers 202 with the id once
JetStream has persisted it; ``GET /v1/invocations/{id}`` reads its stored result
(202 while there is none) and ``DELETE`` cancels it (409 if it had finished).

``GET /v1/apps/{app}`` lists an app's versions and where its aliases point.

Any other ``/{app}/...`` request goes to the app's ASGI entry (``deploy --asgi``),
see ``http_apps``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from superpose import protocol
from superpose.client import dead_letters as dead
from superpose.client.client import Client
from superpose.client.options import Options
from superpose.client.status import lattice_status
from superpose.config import MAX_HTTP_BODY_BYTES
from superpose.errors import (
    BadRequestError,
    CallTimeoutError,
    NoNodesError,
    NotFoundError,
    RemoteError,
    SuperposeError,
)
from superpose.gateway.http_apps import METHODS, HttpApps
from superpose.registry import routing, versions
from superpose.registry.mirror import Target, split_name

VERSION_HEADER = "x-superpose-version"
SESSION_HEADER = "x-superpose-session"
PIN_HEADER = "x-superpose-pin"
TRACE_HEADER = "x-superpose-trace"
TRACE_ID_HEADER = "x-superpose-trace-id"
IDEMPOTENCY_HEADER = "idempotency-key"
MAX_WAIT_S = 60.0
"""``GET /v1/invocations/{id}?wait=S`` waits at most this long, whatever S says."""

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
    http_apps = HttpApps()
    http_app = functools.partial(_http_app, http_apps, max_body_bytes)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        client = await Client.open(lattice_url)
        await client.registry()
        state["client"] = client
        await http_apps.start(client)
        try:
            yield
        finally:
            await http_apps.stop()
            await client.aclose()

    async def call(request: Request) -> Response:
        client = state["client"]
        try:
            app, fn, version = split_name(request.path_params["name"])
            version = request.headers.get(VERSION_HEADER) or version
            body = _parse_call_body(await _read_body(request, max_body_bytes))
            ctx = await request_context(client, request, app, body, fn)
            target = (await client.registry()).resolve(app, fn, version, ctx)
            result = await client.call_json(target, body, ctx=ctx)
        except (BodyTooLarge, SuperposeError) as exc:
            return _error_response(exc, max_body_bytes)
        return Response(
            b'{"result": ' + result + b"}",
            media_type="application/json",
            headers=_answer_headers(target, ctx),
        )

    async def invoke(request: Request) -> Response:
        return await _invoke(state["client"], request, max_body_bytes)

    async def invocation(request: Request) -> Response:
        return await _invocation(state["client"], request)

    async def cancel(request: Request) -> Response:
        return await _cancel(state["client"], request)

    async def status(_: Request) -> Response:
        return JSONResponse(await lattice_status(state["client"]))

    async def health(_: Request) -> Response:
        return JSONResponse({"ok": True})

    async def openapi(_: Request) -> Response:
        return JSONResponse(OPENAPI)

    return Starlette(
        routes=[
            Route("/v1/call/{name:str}", call, methods=["POST"]),
            Route("/v1/invoke/{name:str}", invoke, methods=["POST"]),
            Route("/v1/invocations/{id:str}", invocation, methods=["GET"]),
            Route("/v1/invocations/{id:str}", cancel, methods=["DELETE"]),
            Route("/v1/status", status, methods=["GET"]),
            Route("/v1/apps/{app:str}", functools.partial(_app_versions, state), methods=["GET"]),
            Route("/v1/traces/{id:str}", functools.partial(_trace, state), methods=["GET"]),
            Route("/v1/health", health, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/{app:str}", http_app, methods=METHODS),
            Route("/{app:str}/{path:path}", http_app, methods=METHODS),
        ],
        lifespan=lifespan,
    )


async def _http_app(http_apps: HttpApps, max_body_bytes: int, request: Request) -> Response:
    """``/{app}/...``: the request, answered by the app's ASGI entry wherever it runs."""
    try:
        version = request.headers.get(VERSION_HEADER)
        app = request.path_params["app"]
        ctx = None
        if protocol.is_valid_name(app) and app != "v1":
            ctx = await request_context(http_apps.client, request, app, None)
        target = await http_apps.resolve(app, version, ctx)
        body = await _read_body(request, max_body_bytes)
        return await http_apps.forward(request, target, body, ctx)
    except (BodyTooLarge, SuperposeError) as exc:
        return _error_response(exc, max_body_bytes)


async def _invoke(client: Client, request: Request, max_body_bytes: int) -> Response:
    """``POST /v1/invoke/{name}``: persist a durable invocation, answer 202 with its id."""
    try:
        app, fn, version = split_name(request.path_params["name"])
        version = request.headers.get(VERSION_HEADER) or version
        key = request.headers.get(IDEMPOTENCY_HEADER)
        body = _parse_call_body(await _read_body(request, max_body_bytes))
        ctx = await request_context(client, request, app, body, fn)
        target = (await client.registry()).resolve(app, fn, version, ctx)
        invocation_id = await client.invoke_json(target, body, idempotency_key=key, ctx=ctx)
    except (BodyTooLarge, SuperposeError) as exc:
        return _error_response(exc, max_body_bytes)
    return JSONResponse(
        {"id": invocation_id},
        status_code=202,
        headers={"location": f"/v1/invocations/{invocation_id}", **_answer_headers(target, ctx)},
    )


async def request_context(
    client: Client, request: Request, app: str, body: bytes | None, fn: str | None = None
) -> protocol.CallContext:
    """The version context of an HTTP request: its session (``X-Superpose-Session``, else
    what the app's canary key names: a header, or an argument of ``fn`` in the JSON
    body, by keyword or by position), its pins
    (``X-Superpose-Pin: app@version,...``) and whether to trace it."""
    canary = (await client.registry()).canaries.get(app)
    kwargs: dict[str, Any] | None = None
    args: list[Any] = []
    if body and canary is not None and (canary.key or "").startswith("arg:"):
        with contextlib.suppress(ValueError, AttributeError):  # parsed again only for this
            parsed = json.loads(body)
            kwargs, args = parsed.get("kwargs"), parsed.get("args") or []
    options = Options(
        session=request.headers.get(SESSION_HEADER) or None,
        pins=routing.parse_pins(request.headers.get(PIN_HEADER)) or None,
        trace=request.headers.get(TRACE_HEADER, "").lower() in ("1", "true", "yes"),
    )
    return client.call_context(options, app, kwargs, request.headers, fn=fn, args=args)


def _answer_headers(target: Target, ctx: protocol.CallContext) -> dict[str, str]:
    """Which version answered, and the trace to read the rest of the graph from."""
    headers = {VERSION_HEADER: target.digest}
    if ctx.trace and ctx.trace_id:
        headers[TRACE_ID_HEADER] = ctx.trace_id
    return headers


async def _app_versions(state: dict[str, Client], request: Request) -> Response:
    """``GET /v1/apps/{app}``: every version (newest first) and where the aliases point."""
    app, client = request.path_params["app"], state["client"]
    try:
        if not protocol.is_valid_name(app):
            raise BadRequestError(f"{app!r} is not an app name (letters, digits, _ and -)")
        registry = await client.registry()
        listing = versions.listing(registry, app)
        directory = await client.nodes()
        listing["routing"] = routing.split(registry, app, directory.live())
        return JSONResponse(listing)
    except SuperposeError as exc:
        return _error_response(exc, 0)


async def _trace(state: dict[str, Client], request: Request) -> Response:
    """``GET /v1/traces/{id}``: which version of each function answered a traced request."""
    trace_id = request.path_params["id"]
    try:
        spans = await routing.read_trace(state["client"].nc, trace_id)
    except SuperposeError as exc:
        return _error_response(exc, 0)
    if not spans:
        return _error(404, "NotFound", f"no spans recorded for trace {trace_id}")
    return JSONResponse({"trace": trace_id, "spans": [msgspec.structs.asdict(s) for s in spans]})


async def _invocation(client: Client, request: Request) -> Response:
    """``GET /v1/invocations/{id}[?wait=S]``: the stored result, or 202 pending."""
    invocation_id = request.path_params["id"]
    try:
        wait = _wait_param(request.query_params.get("wait"))
        found = await client.result_async(invocation_id, wait=wait > 0, timeout=wait)
        return await _invocation_response(client, invocation_id, found)
    except SuperposeError as exc:
        return _error_response(exc, 0)


async def _cancel(client: Client, request: Request) -> Response:
    """``DELETE /v1/invocations/{id}``: cancel it, or 409 if it had already finished."""
    invocation_id = request.path_params["id"]
    try:
        finished = await dead.cancel(client, invocation_id)
    except SuperposeError as exc:
        return _error_response(exc, 0)
    if finished is not None:
        return _error(
            409, "AlreadyFinished", f"invocation {invocation_id} had already finished ({finished})"
        )
    return JSONResponse({"id": invocation_id, "status": "cancelled"})


def _wait_param(text: str | None) -> float:
    """Seconds ``?wait=`` asks for, capped at MAX_WAIT_S; 0 when absent."""
    if text is None or text == "":
        return 0.0
    try:
        wait = float(text)
    except ValueError:
        raise BadRequestError(f"wait={text!r} is not a number of seconds") from None
    if not 0 <= wait < float("inf"):
        raise BadRequestError(f"wait must be a number of seconds ≥ 0, got {text!r}")
    return min(wait, MAX_WAIT_S)


async def _invocation_response(
    client: Client, invocation_id: str, found: protocol.Result | None
) -> Response:
    status = dead.status_of(found)
    if found is None:
        return JSONResponse({"id": invocation_id, "status": status}, status_code=202)
    if found.error is None:
        value = await dead.result_json(client.nc, found)
        head = json.dumps({"id": invocation_id, "status": status})[:-1].encode()
        return Response(head + b', "result": ' + value + b"}", media_type="application/json")
    if status == "cancelled":
        return JSONResponse({"id": invocation_id, "status": status})
    error = found.error
    return JSONResponse(
        {
            "id": invocation_id,
            "status": status,
            "error": {
                "type": error.type,
                "message": error.message,
                "traceback": error.traceback,
                "kind": error.kind,
            },
        }
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

_NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "APP.FN or APP.FN@VERSION",
}
_VERSION_PARAM = {
    "name": "X-Superpose-Version",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "version digest or alias",
}
_CALL_BODY = {
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
}
_INVOCATION = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "status": {"enum": ["pending", "done", "failed", "cancelled"]},
        "result": {"description": "present when done"},
        "error": {
            "type": "object",
            "description": "present when failed",
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "traceback": {"type": "string"},
                "kind": {"type": "string"},
            },
        },
    },
    "required": ["id", "status"],
}


def _errors(*answers: tuple[str, str]) -> dict[str, Any]:
    return {
        code: {"description": why, "content": {"application/json": {"schema": _ERROR}}}
        for code, why in answers
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "superpose gateway", "version": "1"},
    "paths": {
        "/v1/call/{name}": {
            "post": {
                "summary": "Call a deployed function and wait for its result",
                "parameters": [_NAME_PARAM, _VERSION_PARAM],
                "requestBody": _CALL_BODY,
                "responses": {
                    "200": {
                        "description": "the result",
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"result": {}}}
                            }
                        },
                    },
                    **_errors(
                        ("400", "malformed body"),
                        ("404", "unknown app, function or version"),
                        ("413", "body over the limit"),
                        ("500", "the function raised or crashed"),
                        ("503", "no node is serving"),
                        ("504", "the function timed out"),
                    ),
                },
            }
        },
        "/v1/invoke/{name}": {
            "post": {
                "summary": "Persist a durable invocation; answers its id at once",
                "parameters": [
                    _NAME_PARAM,
                    _VERSION_PARAM,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 1024},
                        "description": "a key used before returns that invocation's id, "
                        "not a new run",
                    },
                ],
                "requestBody": _CALL_BODY,
                "responses": {
                    "202": {
                        "description": "persisted: it will run even if a node dies",
                        "headers": {
                            "Location": {
                                "schema": {"type": "string"},
                                "description": "/v1/invocations/{id}",
                            }
                        },
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"id": {"type": "string"}},
                                    "required": ["id"],
                                }
                            }
                        },
                    },
                    **_errors(
                        ("400", "malformed body, name or idempotency key"),
                        ("404", "unknown app, function or version"),
                        ("413", "body over the limit"),
                    ),
                },
            }
        },
        "/v1/invocations/{id}": {
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "an invocation id from /v1/invoke (or a Python spawn)",
                }
            ],
            "get": {
                "summary": "The state and result of a durable invocation",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number", "minimum": 0},
                        "description": f"seconds to wait for the result (at most {MAX_WAIT_S:g})",
                    }
                ],
                "responses": {
                    "200": {
                        "description": "finished: done (with result), failed (with error) "
                        "or cancelled",
                        "content": {"application/json": {"schema": _INVOCATION}},
                    },
                    "202": {
                        "description": "pending: no result stored yet (an unknown id too)",
                        "content": {"application/json": {"schema": _INVOCATION}},
                    },
                    **_errors(("400", "malformed id or wait")),
                },
            },
            "delete": {
                "summary": "Cancel a durable invocation: dropped if queued, killed if running",
                "responses": {
                    "200": {
                        "description": "cancelled",
                        "content": {"application/json": {"schema": _INVOCATION}},
                    },
                    **_errors(
                        ("400", "malformed id"),
                        ("409", "it had already finished"),
                    ),
                },
            },
        },
        "/v1/apps/{app}": {
            "get": {
                "summary": "An app's versions (newest first, with files changed from the one "
                "before) and its aliases",
                "parameters": [
                    {"name": "app", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "versions and aliases"},
                    **_errors(("400", "malformed app name"), ("404", "unknown app")),
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
        "/{app}/{path}": {
            "description": "Any method: the request, as the app's ASGI entry (`superpose deploy "
            "PATH --asgi MODULE:ATTR`) answers it, streamed bodies included",
            "parameters": [
                {"name": "app", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                _VERSION_PARAM,
            ],
            "get": {
                "summary": "Forwarded to the app (as are the other methods)",
                "responses": {
                    "default": {"description": "whatever the app answers"},
                    **_errors(
                        ("404", "unknown app or version, or an app without an HTTP entry"),
                        ("413", "body over the limit"),
                        ("500", "the app failed before answering"),
                        ("503", "no node is serving"),
                        ("504", "the app did not answer in time"),
                    ),
                },
            },
        },
    },
}
