"""Durable invocations over HTTP: ``POST /v1/invoke/{name}`` answers 202 with the id once
JetStream has persisted it; ``GET /v1/invocations/{id}`` reads its stored result (202
while there is none) and ``DELETE`` cancels it (409 if it had finished). An id that
was never issued is a 404 for both, and a DELETE of one stores nothing.

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
from superpose.errors import NotFoundError, SuperposeError
from superpose.gateway import contract
from superpose.gateway.errors import BodyTooLarge, error, error_response
from superpose.gateway.requests import IDEMPOTENCY_HEADER, answer_headers, client_of, read_call
from superpose.gateway.results import checked
from superpose.lattice import issued


async def invoke(request: Request) -> Response:
    """``POST /v1/invoke/{name}``: persist a durable invocation, answer 202 with its id."""
    client = client_of(request)
    try:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None:
            contract.IDEMPOTENCY_KEY.check(key)
        target, body, ctx = await read_call(client, request)
        invocation_id = await client.invoke_json(target, body, idempotency_key=key, ctx=ctx)
    except (BodyTooLarge, SuperposeError) as exc:
        return error_response(exc)
    return JSONResponse(
        {"id": invocation_id},
        status_code=202,
        headers={"location": f"/v1/invocations/{invocation_id}", **answer_headers(target, ctx)},
    )


async def invocation_or_cancel(request: Request) -> Response:
    """``/v1/invocations/{id}`` is one route, so a method it does not take answers 405
    naming both it does (two routes would each name only their own)."""
    return await (cancel if request.method == "DELETE" else invocation)(request)


async def invocation(request: Request) -> Response:
    """``GET /v1/invocations/{id}[?wait=S]``: the stored result, or 202 pending; 404
    for an id never issued (looked up before waiting, so it is answered at once)."""
    client = client_of(request)
    try:
        invocation_id = contract.INVOCATION_ID.check(request.path_params["id"])
        wait = contract.wait_s(request.query_params.get("wait"))
        found = await client.result_async(invocation_id, wait=False)
        if found is None and not await issued.was_issued(client.assets.issued, invocation_id):
            raise NotFoundError(dead.unknown_invocation(invocation_id))
        if found is None and wait > 0:
            found = await client.result_async(invocation_id, wait=True, timeout=wait)
        return await _invocation_response(client, invocation_id, found)
    except SuperposeError as exc:
        return error_response(exc)


async def cancel(request: Request) -> Response:
    """``DELETE /v1/invocations/{id}``: cancel it; 409 if it had already finished, 404
    (storing nothing) if it was never issued."""
    invocation_id = request.path_params["id"]
    try:
        contract.INVOCATION_ID.check(invocation_id)
        finished = await dead.cancel(client_of(request), invocation_id)
    except SuperposeError as exc:
        return error_response(exc)
    if finished is not None:
        return error(
            409, "AlreadyFinished", f"invocation {invocation_id} had already finished ({finished})"
        )
    return JSONResponse({"id": invocation_id, "status": "cancelled"})


async def _invocation_response(
    client: Client, invocation_id: str, found: protocol.Result | None
) -> Response:
    """The invocation's state as JSON. A result is spliced in as the bytes the node
    stored, never decoded, as ``/v1/call`` does."""
    status = dead.status_of(found)
    if found is None:
        return JSONResponse({"id": invocation_id, "status": status}, status_code=202)
    if found.error is None:
        value = checked(await dead.result_json(client.nc, found), f"the result of {invocation_id}")
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
