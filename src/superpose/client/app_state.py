"""Which connection an app's own state goes over, inside a function.

An executor's own NATS user, minted while it was neutral, may touch no app's dicts,
queues or cache entries; its *app user*, minted at ``Load`` and tagged with its app,
may touch that app's only (``security/executor_identity.py``). So inside a function,
the app's own ``sp.Dict``/``sp.Queue`` and cached calls of the app's own functions go
over the app user's connection (``runtime.NodeRuntime.app_connection``), lattice-wide
(``shared=True``) ones over the executor's own, and another app's are refused here,
by name, rather than left to the server (whose refusal of a request is silence).
Outside a function, or in an executor without an app user (a lattice without
credentials, a worker without the signer), everything goes over the client's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from superpose import protocol, runtime
from superpose.errors import PermissionDeniedError

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from superpose.client.client import Client


def hosted_app() -> str | None:
    """The app of the function running here, if its executor has an app user: the one
    app whose state it may touch."""
    hosted = runtime.current()
    if hosted is None or hosted.app_connection is None:
        return None
    return hosted.app


async def app_connection(client: Client) -> NATS:
    """The executor's app user's connection (waited for), or the client's own."""
    hosted = runtime.current()
    if hosted is None or hosted.app_connection is None:
        return client.nc
    return await hosted.app_connection()


async def connection_for(client: Client, scope: str, what: str) -> NATS:
    """The connection to use ``scope``'s dicts and queues over (``what`` names the
    handle); PermissionDeniedError for another app's from inside a function."""
    own = hosted_app()
    if own is None or scope == protocol.SHARED_SCOPE:
        return client.nc
    app = scope.split(".", 1)[1]
    if app != own:
        raise PermissionDeniedError(
            f"{what}: a function of app {own!r} may use its own app's dicts and queues "
            f"and shared=True ones, not those of app {app!r} (call a function of {app!r} "
            "to touch them)"
        )
    return await app_connection(client)
