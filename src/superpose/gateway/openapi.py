"""The gateway's OpenAPI 3.1 document, served at ``/openapi.json``.

Written by hand, not generated from the routes: the endpoints take raw JSON and pass
results through as bytes, so there are no models to generate it from.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from superpose.gateway.invocations import MAX_WAIT_S

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
    """Error answers, each with the one error body ``errors.error`` writes."""
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


async def openapi(_: Request) -> Response:
    """``GET /openapi.json``: a constant, so it is answered without asking the lattice."""
    return JSONResponse(OPENAPI)
