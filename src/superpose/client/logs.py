"""Reading function output back from the lattice's log stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from superpose import protocol
from superpose.client.client import Client
from superpose.errors import NotFoundError, PermissionDeniedError
from superpose.lattice.connection import owner, permits_of
from superpose.registry.mirror import Registry

FETCH_BATCH = 256
FOLLOW_POLL_S = 1.0


async def read(
    client: Client, app: str, fn: str | None = None, *, follow: bool = False
) -> AsyncIterator[protocol.LogRecord]:
    """Every stored line of ``app`` (or ``app.fn``), then new ones while ``follow``.

    With no line stored, a name no deployed version has is refused (``NotFoundError``):
    a typo would otherwise print nothing, or follow nothing forever. A script's app is
    in no registry, so it is known only once it has logged.
    """
    check_readable(client, app, fn)
    # A named consumer: nats-py then creates it with its filter in the request subject
    # (CONSUMER.CREATE.SP_LOGS.<name>.<filter>), which a role's `--app` grant pins.
    sub = await client.assets.js.pull_subscribe(
        protocol.log_filter(app, fn),
        durable=None,
        stream=protocol.LOGS_STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=60.0
        ),
    )
    try:
        backlog = (await sub.consumer_info()).num_pending or 0
        if backlog == 0:
            check_deployed(await client.registry(), app, fn)
        while backlog > 0 or follow:
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=FOLLOW_POLL_S)
            except nats.errors.TimeoutError:
                if not follow:
                    return
                continue
            for msg in msgs:
                backlog -= 1
                yield protocol.LogRecord.decode(msg.data)
    finally:
        await sub.unsubscribe()


def check_readable(client: Client, app: str, fn: str | None) -> None:
    """Refuse at once, naming the app, the logs the client's user may not read (a role
    made with another ``--app``): the server would refuse the consumer in silence, and
    the request would wait for its timeout."""
    create = protocol.filtered_consumer_subject(
        protocol.LOGS_STREAM, "*", protocol.log_filter(app, fn)
    )
    if not permits_of(client.nc).may_publish(create):
        user = owner(client.nc) or "these credentials"
        raise PermissionDeniedError(
            f"{user} may not read the logs of {app}: its credentials were made for other "
            "apps (`superpose creds create --app`); use credentials for this app"
        )


def check_deployed(registry: Registry, app: str, fn: str | None) -> None:
    """Raise ``NotFoundError`` unless some version of ``app`` (with ``fn``, if named) is
    deployed: older versions count, their lines are still kept."""
    versions = registry.versions_of(app).values()
    if fn is None or any(fn in version.functions for version in versions):
        return
    names = ", ".join(sorted({name for version in versions for name in version.functions}))
    raise NotFoundError(f"no version of {app} has a function {fn!r}; it has: {names or 'none'}")
