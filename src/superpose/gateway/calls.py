"""``POST /v1/call/{name}``: call a function and answer with its result, JSON in and out.

The result is passed through as the JSON bytes the node produced: the gateway never
decodes it, so a large result costs one copy, not a parse and a re-encode.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from superpose.errors import SuperposeError
from superpose.gateway.errors import BodyTooLarge, error_response
from superpose.gateway.requests import answer_headers, client_of, read_call
from superpose.gateway.results import checked


async def call(request: Request) -> Response:
    """The function's result as ``{"result": ...}``, headed by the version that answered."""
    client = client_of(request)
    try:
        target, body, ctx = await read_call(client, request)
        result = checked(
            await client.call_json(target, body, ctx=ctx), f"the result of {target.app}.{target.fn}"
        )
    except (BodyTooLarge, SuperposeError) as exc:
        return error_response(exc)
    return Response(
        b'{"result": ' + result + b"}",
        media_type="application/json",
        headers=answer_headers(target, ctx),
    )
