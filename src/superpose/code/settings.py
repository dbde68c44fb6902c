"""A function's secrets and env (``@sp.function(secrets=[...], env={...})``), checked.

The same rules hold wherever the settings are read: the decorator in script mode,
the literal options deploy reads from the source, and the options a deployed
version recorded (which a call and a scheduled tick turn into the invocation's
``ExecutorSettings``). The values become environment variables of the executor,
so they must be what an environment can hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from superpose import protocol
from superpose.errors import BadRequestError

MAX_VALUE_CHARS = 64 * 1024
"""Per value: Linux refuses to start a process (a subprocess the function starts)
whose environment holds a string over 128 KiB."""


def check_secret_name(name: object) -> str:
    if not isinstance(name, str) or not protocol.is_valid_secret_name(name):
        raise BadRequestError(
            f"{name!r} is not a secret name: use {protocol.SECRET_NAME_RULE} (e.g. STRIPE_KEY)"
        )
    _not_reserved(name, "a secret")
    return name


def check_secret_value(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise BadRequestError(
            f"the value of secret {name} must be text, got {type(value).__name__}"
        )
    if not value:
        raise BadRequestError(f"the value of secret {name} is empty")
    _fits_environment(f"the value of secret {name}", value)
    return value


def check_secrets(secrets: object) -> list[str]:
    """``secrets=``: a list of names (a lone string is refused: it is a list of letters)."""
    if secrets is None:
        return []
    if isinstance(secrets, str) or not isinstance(secrets, list | tuple | set | frozenset):
        raise BadRequestError(
            f'secrets= takes a list of secret names, e.g. secrets=["STRIPE_KEY"], got {secrets!r}'
        )
    return sorted({check_secret_name(name) for name in secrets})


def check_env(env: object) -> dict[str, str]:
    """``env=``: names like environment variables, values strings."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise BadRequestError(
            f'env= takes a dict of names to strings, e.g. env={{"MODE": "prod"}}, got {env!r}'
        )
    checked: dict[str, str] = {}
    for name, value in env.items():
        if not isinstance(name, str) or not protocol.is_valid_env_name(name):
            raise BadRequestError(f"env name {name!r} is not valid: use {protocol.ENV_NAME_RULE}")
        _not_reserved(name, "an env name")
        if not isinstance(value, str):
            raise BadRequestError(
                f"env value of {name} must be a string, got {type(value).__name__} {value!r}"
            )
        _fits_environment(f"env value of {name}", value)
        checked[name] = value
    return checked


def settings_of(secrets: object, env: object) -> protocol.ExecutorSettings | None:
    """The checked settings, or None for a function that has none (the common case)."""
    names, values = check_secrets(secrets), check_env(env)
    both = sorted(set(names) & set(values))
    if both:
        raise BadRequestError(f"{both[0]} is both a secret and an env name: keep one")
    if not names and not values:
        return None
    return protocol.ExecutorSettings(secrets=names, env=values)


def recorded_settings(options: Mapping[str, Any]) -> protocol.ExecutorSettings | None:
    """The settings a deployed version recorded in a function's options."""
    return settings_of(options.get("secrets"), options.get("env"))


def _not_reserved(name: str, what: str) -> None:
    if name.upper().startswith(protocol.RESERVED_ENV_PREFIX):
        raise BadRequestError(
            f"{name} cannot be {what}: {protocol.RESERVED_ENV_PREFIX}* names are superpose's "
            "own settings of the executor"
        )


def _fits_environment(what: str, value: str) -> None:
    if "\0" in value:
        raise BadRequestError(f"{what} contains a NUL character, which no environment can hold")
    if len(value) > MAX_VALUE_CHARS:
        raise BadRequestError(f"{what} is over {MAX_VALUE_CHARS} characters")
