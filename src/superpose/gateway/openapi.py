"""The gateway's OpenAPI 3.1 document, served at ``/openapi.json``.

Written by hand, not generated from the routes: the endpoints take raw JSON and pass
results through as bytes, so there are no models to generate it from. What the
gateway validates (names, ids, versions, headers, ``wait``) is not written here but
taken from ``contract``, the definitions the handlers check requests with.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from superpose import protocol
from superpose.gateway import auth, contract
from superpose.gateway.http_apps import METHODS

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
    "required": ["error"],
}


def _param(name: str, where: str, text: contract.Text, why: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": text.schema(),
        "description": f"{why} ({text.hint})",
    }


_NAME_PARAM = _param("name", "path", contract.FUNCTION, "the function to call")
_VERSION_PARAM = _param(
    "X-Superpose-Version",
    "header",
    contract.VERSION,
    "the version to call, before an @VERSION in the path; an empty header is refused",
)
_ID_PARAM = _param(
    "id", "path", contract.INVOCATION_ID, "an invocation id from /v1/invoke (or a Python spawn)"
)
_VERSION_ANSWERED = {
    "X-Superpose-Version": {
        "required": True,
        "schema": {"type": "string"},
        "description": "the digest of the version that answered",
    }
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
_UNKNOWN_ID = (
    "no invocation was issued with this id (an idempotency key's id exists only once "
    "/v1/invoke has answered 202 for it), or its record expired"
)


def _json(why: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"description": why, "content": {"application/json": {"schema": schema}}, **extra}


def _errors(*answers: tuple[str, str]) -> dict[str, Any]:
    """Error answers, each with the one error body ``errors.error`` writes."""
    return {code: _json(why, _ERROR) for code, why in answers}


_CALL = {
    "post": {
        "summary": "Call a deployed function and wait for its result",
        "parameters": [_NAME_PARAM, _VERSION_PARAM],
        "requestBody": _CALL_BODY,
        "responses": {
            "200": _json(
                "the result",
                {"type": "object", "properties": {"result": {}}, "required": ["result"]},
                headers=_VERSION_ANSWERED,
            ),
            **_errors(
                (
                    "400",
                    "malformed body, name or version, or an ambiguous version prefix; "
                    "JSON the standard refuses (NaN, Infinity, a number too large for a "
                    "float, an integer over 4300 digits, nesting over 64 levels)",
                ),
                ("404", "unknown app, function or version"),
                ("413", "body over the limit"),
                (
                    "500",
                    "the function raised or crashed, or its result holds NaN or "
                    "Infinity, which JSON cannot carry (type SerializationError)",
                ),
                ("503", "no node is serving"),
                ("504", "the function timed out"),
            ),
        },
    }
}

_INVOKE = {
    "post": {
        "summary": "Persist a durable invocation; answers its id at once",
        "parameters": [
            _NAME_PARAM,
            _VERSION_PARAM,
            _param(
                "Idempotency-Key",
                "header",
                contract.IDEMPOTENCY_KEY,
                "a key used before returns that invocation's id, not a new run",
            ),
        ],
        "requestBody": _CALL_BODY,
        "responses": {
            "202": _json(
                "persisted: it will run even if a node dies",
                {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
                headers={
                    "Location": {
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "/v1/invocations/{id}",
                    },
                    **_VERSION_ANSWERED,
                },
                links={
                    "state": {
                        "operationId": "invocation",
                        "parameters": {"id": "$response.body#/id"},
                    },
                    "cancel": {
                        "operationId": "cancel",
                        "parameters": {"id": "$response.body#/id"},
                    },
                },
            ),
            **_errors(
                ("400", "malformed body, name, version or idempotency key"),
                ("404", "unknown app, function or version"),
                ("413", "body over the limit"),
                ("503", "no node meets the function's needs"),
            ),
        },
    }
}

_INVOCATIONS = {
    "parameters": [_ID_PARAM],
    "get": {
        "operationId": "invocation",
        "summary": "The state and result of a durable invocation",
        "parameters": [
            {
                "name": "wait",
                "in": "query",
                "required": False,
                "schema": contract.wait_schema(),
                "description": "seconds to wait for the result, from 0 (the default) to "
                f"{contract.MAX_WAIT_S:g}; anything else is refused",
            }
        ],
        "responses": {
            "200": _json(
                "finished: done (with result), failed (with error) or cancelled", _INVOCATION
            ),
            "202": _json("pending: no result stored yet", _INVOCATION),
            **_errors(("400", "malformed id or wait"), ("404", _UNKNOWN_ID)),
        },
    },
    "delete": {
        "operationId": "cancel",
        "summary": "Cancel a durable invocation: dropped if queued, killed if running",
        "responses": {
            "200": _json("cancelled", _INVOCATION),
            **_errors(
                ("400", "malformed id"),
                ("404", f"{_UNKNOWN_ID}; nothing is stored"),
                ("409", "it had already finished"),
            ),
        },
    },
}

_READS = {
    "/v1/status": {
        "get": {
            "summary": "Nodes, apps and versions",
            "responses": {"200": _json("lattice state", {"type": "object"})},
        }
    },
    "/v1/apps/{app}": {
        "get": {
            "summary": "An app's versions (newest first, with files changed from the one "
            "before), its aliases and its routing",
            "parameters": [_param("app", "path", contract.APP, "the app")],
            "responses": {
                "200": _json("versions, aliases and routing", {"type": "object"}),
                **_errors(("400", "malformed app name"), ("404", "unknown app")),
            },
        }
    },
    "/v1/traces/{id}": {
        "get": {
            "summary": "Which version of each function answered a traced request",
            "parameters": [
                _param("id", "path", contract.TRACE_ID, "an X-Superpose-Trace-Id answered")
            ],
            "responses": {
                "200": _json(
                    "the spans recorded",
                    {
                        "type": "object",
                        "properties": {"trace": {"type": "string"}, "spans": {"type": "array"}},
                        "required": ["trace", "spans"],
                    },
                ),
                **_errors(("400", "malformed trace id"), ("404", "no spans for that id")),
            },
        }
    },
    "/v1/health": {
        "get": {
            "summary": "Liveness",
            "responses": {
                "200": _json(
                    "ok",
                    {"type": "object", "properties": {"ok": {"const": True}}, "required": ["ok"]},
                )
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})},
        }
    },
}


def _forwarded(*path: dict[str, Any]) -> dict[str, Any]:
    """``/{app}`` and ``/{app}/{path}``: every method the route takes, answered by the
    app. Only ``default``: the app may answer any status, with any body, so a status
    the gateway also answers with (404, 500, ...) cannot promise the error body."""
    operation = {
        "summary": "Forwarded to the app's ASGI entry",
        "responses": {
            "default": {
                "description": "whatever the app answers; the gateway itself answers 404 "
                "(unknown app or version, or an app without an HTTP entry), 400 (malformed "
                "X-Superpose-Version), 413 (body over the limit), 500 (the app failed "
                "before answering), 503 (no node) or 504 (no answer in time), with the "
                "JSON error body"
            }
        },
    }
    return {
        "description": "The request, as the app's ASGI entry (`superpose deploy PATH --asgi "
        "MODULE:ATTR`) answers it, streamed bodies included",
        "parameters": [
            _param("app", "path", contract.HTTP_APP, "the app"),
            *path,
            _VERSION_PARAM,
        ],
        **{method.lower(): operation for method in METHODS},
    }


_APP_PATH = {
    "name": "path",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the path the app sees, under its root path /{app}",
}


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """``paths`` with each operation's security as ``auth.RULES`` has it: an open route
    needs none, any other the bearer token, and may answer 401 and 403. Taken from the
    table the gateway checks with, so the document cannot differ from it."""
    return {path: _secured_path(path, item) for path, item in paths.items()}


def _secured_path(path: str, item: dict[str, Any]) -> dict[str, Any]:
    secured = dict(item)
    for method, operation in item.items():
        if method.upper() not in METHODS:
            continue
        rule = next(r for r in auth.RULES if r.template == path and method.upper() in r.methods)
        secured[method] = _with_security(operation, rule)
    return secured


def _with_security(operation: dict[str, Any], rule: auth.Rule) -> dict[str, Any]:
    if rule.role == auth.OPEN:
        return {**operation, "security": []}
    roles = protocol.TOKEN_ROLES
    allowed = ", ".join(roles[roles.index(rule.role) :])
    scope = f"; a token created with --app must name {{{rule.app_param}}}'s app"
    return {
        **operation,
        "description": f"Needs a bearer token of role {allowed}"
        + (scope if rule.app_param else "; not a token created with --app"),
        "responses": {
            **operation["responses"],
            **_errors(
                (
                    "401",
                    "no token, a malformed Authorization header, or a token that is "
                    "revoked or was never issued (with `WWW-Authenticate: Bearer`)",
                ),
                (
                    "403",
                    f"the token's role is not one of {allowed}, or it is limited to another app",
                ),
            ),
        },
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "superpose gateway",
        "version": "1",
        "description": 'Errors are `{"error": {"type", "message", "traceback"?}}`. '
        "A method a path does not take answers 405 with an `Allow` header. "
        "Every path but /v1/health, /openapi.json and the HTTP apps needs "
        "`Authorization: Bearer <token>` (`superpose token create`). "
        "On any path, a client that does not send its request headers within 10 s, or "
        "its body within 60 s of them, is answered 408 and disconnected; past the "
        "connection cap a new connection is answered 503 (the gateway's flags "
        "`--header-timeout`, `--body-timeout`, `--max-connections`).",
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "a token from `superpose token create --role ROLE [--app APP]`, "
                "or the admin token `superpose up` writes to gateway.token in its state folder",
            }
        }
    },
    "security": [{"bearer": []}],
    "paths": _secured(
        {
            "/v1/call/{name}": _CALL,
            "/v1/invoke/{name}": _INVOKE,
            "/v1/invocations/{id}": _INVOCATIONS,
            **_READS,
            "/{app}": _forwarded(),
            "/{app}/{path}": _forwarded(_APP_PATH),
        }
    ),
}


async def openapi(_: Request) -> Response:
    """``GET /openapi.json``: a constant, so it is answered without asking the lattice."""
    return JSONResponse(OPENAPI)
