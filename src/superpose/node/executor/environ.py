"""A function's settings put into this executor's environment, before any user import.

The agent reads the secrets' values and hands them over in the ``Load`` frame: an
executor's own NATS user may not read the secrets bucket. ``os.environ`` is the whole process's, so
an executor with settings hosts only the functions that declared the same ones
(the agent keeps executors by bundle and settings, ``protocol.host_key``).
"""

from __future__ import annotations

import os

from superpose import protocol
from superpose.lattice import secrets

SECRET_NOT_SET = "SecretNotSet"


def apply_settings(settings: protocol.ExecutorSettings | None, values: dict[str, str]) -> None:
    """Set the env and the secrets' ``values``; ``SecretNotSet`` (nothing set) if the agent
    did not send one of them."""
    if settings is None:
        return
    missing = [name for name in settings.secrets if name not in values]
    if missing:
        raise secrets.SecretNotSet(missing[0])
    os.environ.update(settings.env)
    os.environ.update({name: values[name] for name in settings.secrets})


def not_prepared(exc: Exception) -> protocol.ErrorInfo:
    """Why the settings could not be applied, naming the secret; never a value."""
    if isinstance(exc, secrets.SecretNotSet):
        return protocol.ErrorInfo(protocol.ERR_PREPARE, SECRET_NOT_SET, exc.message)
    return protocol.ErrorInfo(
        protocol.ERR_PREPARE, type(exc).__name__, f"could not read the function's secrets: {exc}"
    )
