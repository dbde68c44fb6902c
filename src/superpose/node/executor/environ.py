"""A function's settings put into this executor's environment, before any user import.

The executor reads the secrets itself, from the lattice, when it loads the bundle:
the agent only ever handles their names. ``os.environ`` is the whole process's, so
an executor with settings hosts only the functions that declared the same ones
(the agent keeps executors by bundle and settings, ``protocol.host_key``).
"""

from __future__ import annotations

import os

from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.lattice import secrets

SECRET_NOT_SET = "SecretNotSet"


async def apply_settings(nc: NATS, settings: protocol.ExecutorSettings | None) -> None:
    """Set the env and the secrets' values; ``SecretNotSet`` (nothing set) if one is missing."""
    if settings is None:
        return
    values: dict[str, str] = {}
    if settings.secrets:
        kv = await nc.jetstream().key_value(protocol.SECRETS_BUCKET)
        values = await secrets.read(kv, settings.secrets)
    os.environ.update(settings.env)
    os.environ.update(values)


def not_prepared(exc: Exception) -> protocol.ErrorInfo:
    """Why the settings could not be applied, naming the secret; never a value."""
    if isinstance(exc, secrets.SecretNotSet):
        return protocol.ErrorInfo(protocol.ERR_PREPARE, SECRET_NOT_SET, exc.message)
    return protocol.ErrorInfo(
        protocol.ERR_PREPARE, type(exc).__name__, f"could not read the function's secrets: {exc}"
    )
