"""What the gateway reads from a request: its body within the limit, the call it names,
the version context its headers ask for; and the headers it answers with.

``/v1/call``, ``/v1/invoke`` and the HTTP apps read requests the same way, so a
header or a body means the same on every endpoint.
"""

from __future__ import annotations

import contextlib
from typing import Any

from starlette.requests import ClientDisconnect, Request

from superpose import protocol
from superpose.client.arguments import check_call
from superpose.client.client import Client
from superpose.client.options import Options
from superpose.errors import BadRequestError
from superpose.gateway import contract
from superpose.gateway.errors import BodyTooLarge
from superpose.lattice import strict_json
from superpose.registry import routing
from superpose.registry.mirror import Target, split_name

VERSION_HEADER = "x-superpose-version"
SESSION_HEADER = "x-superpose-session"
PIN_HEADER = "x-superpose-pin"
TRACE_HEADER = "x-superpose-trace"
TRACE_ID_HEADER = "x-superpose-trace-id"
IDEMPOTENCY_HEADER = "idempotency-key"


def client_of(request: Request) -> Client:
    """The client the app's lifespan opened; typed here because ``app.state`` is not."""
    client: Client = request.app.state.client
    return client


def body_limit(request: Request) -> int:
    """The body limit ``create_app`` was given, from ``app.state``: handlers need no closure."""
    limit: int = request.app.state.max_body_bytes
    return limit


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused as soon as it is known to exceed ``limit``: from the
    declared length before reading, else while streaming, so an oversized body is
    never held whole."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or cut off by ``guard`` for sending too slowly
        raise BadRequestError(
            f"the client disconnected after sending {size} bytes of its body"
        ) from None
    return b"".join(chunks)


def parse_call_body(body: bytes) -> tuple[bytes, list[Any], dict[str, Any]]:
    """Validate ``{"args": [...], "kwargs": {...}}``: it re-encoded, and its arguments.

    Checked here so a malformed body is a 400 naming the problem, not a failure on a node.
    """
    if not body.strip():
        return b'{"args": [], "kwargs": {}}', [], {}
    parsed = parse_json(body)
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
    return strict_json.dumps({"args": args, "kwargs": kwargs}), args, kwargs


def parse_json(body: bytes) -> Any:
    """A request body as JSON, by the rules of ``strict_json`` (no NaN, no 5,000-digit
    integers, no nesting past 64): the one parser of every body the gateway reads."""
    try:
        return strict_json.loads(body)
    except BadRequestError as exc:
        raise BadRequestError(f"request body: {exc.message}") from None


async def read_call(client: Client, request: Request) -> tuple[Target, bytes, protocol.CallContext]:
    """The function a ``/v1/call`` or ``/v1/invoke`` request names, in the version its
    name, ``X-Superpose-Version`` header or version context asks for; with its body.

    One reading for both, so a durable invocation runs what the same call would have.
    """
    app, fn, version = split_name(contract.FUNCTION.check(request.path_params["name"]))
    version = version_asked(request) or version
    body, args, kwargs = parse_call_body(await read_body(request, body_limit(request)))
    ctx = await request_context(client, request, app, body, fn)
    target = (await client.registry()).resolve(app, fn, version, ctx)
    check_call(target, len(args), kwargs)  # a 400 naming the parameter, not a node's error
    return target, body, ctx


def version_asked(request: Request) -> str | None:
    """The ``X-Superpose-Version`` header, if sent; an empty or malformed one is refused
    rather than read as "no version", so a client's mistake is not silently ``latest``."""
    version = request.headers.get(VERSION_HEADER)
    return None if version is None else contract.VERSION.check(version)


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
        with contextlib.suppress(BadRequestError, AttributeError):  # parsed again only for this
            parsed = parse_json(body)
            kwargs, args = parsed.get("kwargs"), parsed.get("args") or []
    options = Options(
        session=request.headers.get(SESSION_HEADER) or None,
        pins=routing.parse_pins(request.headers.get(PIN_HEADER)) or None,
        trace=request.headers.get(TRACE_HEADER, "").lower() in ("1", "true", "yes"),
    )
    return client.call_context(options, app, kwargs, request.headers, fn=fn, args=args)


def answer_headers(target: Target, ctx: protocol.CallContext) -> dict[str, str]:
    """Which version answered, and the trace to read the rest of the graph from."""
    headers = {VERSION_HEADER: target.version}
    if ctx.trace and ctx.trace_id:
        headers[TRACE_ID_HEADER] = ctx.trace_id
    return headers
