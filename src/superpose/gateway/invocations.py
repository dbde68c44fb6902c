"""Durable invocations over HTTP: ``POST /v1/invoke/{name}`` answers 202 with the id once
JetStream has persisted it; ``GET /v1/invocations/{id}`` reads its stored result (202
while there is none) and ``DELETE`` cancels it (409 if it had finished).

An HTTP client cannot hold a call open across a node's death, so it gets an id to
come back with instead of the result.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from superpose import protocol
from superpose.client import dead_letters as dead
from superpose.client.client import Client
from superpose.errors import BadRequestError, SuperposeError
from superpose.gateway.errors import BodyTooLarge, error, error_response
from superpose.gateway.requests import IDEMPOTENCY_HEADER, answer_headers, client_of, read_call

MAX_WAIT_S = 60.0
"""``GET /v1/invocations/{id}?wait=S`` waits at most this long, whatever S says."""


async def invoke(request: Request) -> Response:
    """``POST /v1/invoke/{name}``: persist a durable invocation, answer 202 with its id."""
    client = client_of(request)
    try:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        target, body, ctx = await read_call(client, request)
        invocation_id = await client.invoke_json(target, body, idempotency_key=key, ctx=ctx)
    except (BodyTooLarge, SuperposeError) as exc:
        return error_response(exc)
    return JSONResponse(
        {"id": invocation_id},
        status_code=202,
        headers={"location": f"/v1/invocations/{invocation_id}", **answer_headers(target, ctx)},
    )


async def invocation(request: Request) -> Response:
    """``GET /v1/invocations/{id}[?wait=S]``: the stored result, or 202 pending."""
    client, invocation_id = client_of(request), request.path_params["id"]
    try:
        wait = _wait_param(request.query_params.get("wait"))
        found = await client.result_async(invocation_id, wait=wait > 0, timeout=wait)
        return await _invocation_response(client, invocation_id, found)
    except SuperposeError as exc:
        return error_response(exc)


async def cancel(request: Request) -> Response:
    """``DELETE /v1/invocations/{id}``: cancel it, or 409 if it had already finished."""
    invocation_id = request.path_params["id"]
    try:
        finished = await dead.cancel(client_of(request), invocation_id)
    except SuperposeError as exc:
        return error_response(exc)
    if finished is not None:
        return error(
            409, "AlreadyFinished", f"invocation {invocation_id} had already finished ({finished})"
        )
    return JSONResponse({"id": invocation_id, "status": "cancelled"})


def _wait_param(text: str | None) -> float:
    """Seconds ``?wait=`` asks for, capped at MAX_WAIT_S so no request holds a
    connection for long; 0 when absent."""
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
    """The invocation's state as JSON. A result is spliced in as the bytes the node
    stored, never decoded, as ``/v1/call`` does."""
    status = dead.status_of(found)
    if found is None:
        return JSONResponse({"id": invocation_id, "status": status}, status_code=202)
    if found.error is None:
        value = await dead.result_json(client.nc, found)
        head = json.dumps({"id": invocation_id, "status": status})[:-1].encode()
        return Response(head + b', "result": ' + value + b"}", media_type="application/json")
    if status == "cancelled":
        return JSONResponse({"id": invocation_id, "status": status})
    failure = found.error
    return JSONResponse(
        {
            "id": invocation_id,
            "status": status,
            "error": {
                "type": failure.type,
                "message": failure.message,
                "traceback": failure.traceback,
                "kind": failure.kind,
            },
        }
    )
