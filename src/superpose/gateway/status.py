"""The read-only endpoints: ``/v1/status``, ``/v1/health``, ``/v1/apps/{app}`` and
``/v1/traces/{id}``, what runs on the lattice and which versions answered.

They send nothing to a node: each reads what the gateway's client already mirrors
or what JetStream stores, so they answer even when no node is serving.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from superpose.client.status import lattice_status
from superpose.errors import SuperposeError
from superpose.gateway import contract
from superpose.gateway.errors import error, error_response
from superpose.gateway.requests import client_of
from superpose.registry import routing, versions


async def status(request: Request) -> Response:
    """``GET /v1/status``: nodes, apps and versions, the state ``superpose status`` reads."""
    return JSONResponse(await lattice_status(client_of(request)))


async def health(_: Request) -> Response:
    """``GET /v1/health``: the gateway is up; says nothing of the lattice behind it."""
    return JSONResponse({"ok": True})


async def app_versions(request: Request) -> Response:
    """``GET /v1/apps/{app}``: every version (newest first) and where the aliases point."""
    app, client = request.path_params["app"], client_of(request)
    try:
        contract.APP.check(app)
        registry = await client.registry()
        listing = versions.listing(registry, app)
        directory = await client.nodes()
        listing["routing"] = routing.split(registry, app, directory.live())
        return JSONResponse(listing)
    except SuperposeError as exc:
        return error_response(exc)


async def trace(request: Request) -> Response:
    """``GET /v1/traces/{id}``: which version of each function answered a traced request."""
    trace_id = request.path_params["id"]
    try:
        contract.TRACE_ID.check(trace_id)
        spans = await routing.read_trace(client_of(request).nc, trace_id)
    except SuperposeError as exc:
        return error_response(exc)
    if not spans:
        return error(404, "NotFound", f"no spans recorded for trace {trace_id}")
    return JSONResponse({"trace": trace_id, "spans": [msgspec.structs.asdict(s) for s in spans]})
