"""``/{app}/...``: any other request, answered by the app's ASGI entry (``deploy --asgi``).

The gateway's side of it (resolving the entry, forwarding, streaming the answer back)
is ``http_apps.HttpApps``; this is only the route: it reads the request as the JSON
endpoints do, so versions, sessions, pins and the body limit apply to apps alike.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from superpose import protocol
from superpose.errors import SuperposeError
from superpose.gateway.errors import BodyTooLarge, error_response
from superpose.gateway.http_apps import HttpApps
from superpose.gateway.requests import VERSION_HEADER, body_limit, read_body, request_context


async def http_app(request: Request) -> Response:
    """The request, answered by the app's ASGI entry wherever it runs."""
    http_apps: HttpApps = request.app.state.http_apps
    try:
        version = request.headers.get(VERSION_HEADER)
        app = request.path_params["app"]
        ctx = None
        if protocol.is_valid_name(app) and app != "v1":
            ctx = await request_context(http_apps.client, request, app, None)
        target = await http_apps.resolve(app, version, ctx)
        body = await read_body(request, body_limit(request))
        return await http_apps.forward(request, target, body, ctx)
    except (BodyTooLarge, SuperposeError) as exc:
        return error_response(exc)
