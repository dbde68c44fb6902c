"""``/{app}/...``: any other request, answered by the app's ASGI entry (``deploy --asgi``).

The gateway's side of it (resolving the entry, forwarding, streaming the answer back)
is ``http_apps.HttpApps``; this is only the route: it reads the request as the JSON
endpoints do, so versions, sessions, pins and the body limit apply to apps alike.
It matches only a path whose first segment can be an app's name, so a path of the
API itself (``/v1/...``, ``/openapi.json``) is never forwarded.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from superpose.errors import SuperposeError
from superpose.gateway import contract
from superpose.gateway.errors import BodyTooLarge, error_response
from superpose.gateway.http_apps import HttpApps
from superpose.gateway.requests import body_limit, read_body, request_context, version_asked


class AppRoute(Route):
    """A route that matches only when its ``app`` parameter can name an app."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE and not contract.HTTP_APP.accepts(child["path_params"]["app"]):
            return Match.NONE, {}
        return match, child


async def http_app(request: Request) -> Response:
    """The request, answered by the app's ASGI entry wherever it runs."""
    http_apps: HttpApps = request.app.state.http_apps
    try:
        version = version_asked(request)
        app = request.path_params["app"]
        ctx = await request_context(http_apps.client, request, app, None)
        target = await http_apps.resolve(app, version, ctx)
        body = await read_body(request, body_limit(request))
        return await http_apps.forward(request, target, body, ctx)
    except (BodyTooLarge, SuperposeError) as exc:
        return error_response(exc)
