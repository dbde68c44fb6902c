"""Failures as HTTP answers: one JSON shape and one status per kind of failure.

Every endpoint answers through ``error_response``, so an exception gets the same
status and body wherever it is raised: a user error is a 4xx (bad body 400, unknown
function 404, body too big 413, an executor that could not be prepared 424), a function
that raised or crashed a 500, a timeout 504, no node 503.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from superpose import protocol
from superpose.errors import (
    BadRequestError,
    CallTimeoutError,
    NoNodesError,
    NotFoundError,
    RemoteError,
    SuperposeError,
)

_REMOTE_STATUS = {
    protocol.ERR_TIMEOUT: 504,
    protocol.ERR_NOT_FOUND: 404,
    protocol.ERR_BAD_REQUEST: 400,
    protocol.ERR_PREPARE: 424,
}
"""A node's failure by kind; any other kind (the function raised or crashed) is a 500.
``prepare`` (a secret not set, a start-up hook that raised) is 424 Failed Dependency:
the call never ran, for a reason its app's owner can fix."""

_USER_STATUS: list[tuple[type[SuperposeError], int]] = [
    (NotFoundError, 404),
    (BadRequestError, 400),
    (CallTimeoutError, 504),
    (NoNodesError, 503),
]
"""A failure found on this side; the error type is the class name less ``Error``."""


class BodyTooLarge(Exception):
    """A request body over the gateway's limit. Not a ``SuperposeError``: the lattice
    never sees the request. It carries the limit so the 413 names it wherever the
    body was read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


def error(
    status: int,
    type_name: str,
    message: str,
    traceback: str = "",
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The one error body every endpoint answers with, so clients parse a single shape."""
    body: dict[str, Any] = {"type": type_name, "message": message}
    if traceback:
        body["traceback"] = traceback
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def routing_error(request: Request, exc: Exception) -> Response:
    """What the router answers itself (no route matched the path, or none takes the
    method) in the same shape as every other error, its ``Allow`` header kept."""
    if not isinstance(exc, HTTPException):  # the only kind it is registered for
        raise exc
    path = request.url.path
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {path}; it takes {allowed}"
        return error(405, "MethodNotAllowed", message, headers=exc.headers)
    if exc.status_code == 404:
        message = f"no such endpoint or app: {path} (the API is described at /openapi.json)"
        return error(404, "NotFound", message)
    return error(exc.status_code, "HTTPError", exc.detail, headers=exc.headers)


def error_response(exc: BodyTooLarge | SuperposeError) -> JSONResponse:
    """The HTTP answer for everything a request can fail with."""
    if isinstance(exc, BodyTooLarge):
        return error(413, "PayloadTooLarge", str(exc))
    if isinstance(exc, RemoteError):
        status = _REMOTE_STATUS.get(exc.kind, 500)
        return error(status, exc.type, exc.remote_message, exc.traceback)
    for kind, status in _USER_STATUS:
        if isinstance(exc, kind):
            return error(status, kind.__name__.removesuffix("Error"), exc.message)
    return error(500, type(exc).__name__, exc.message)
