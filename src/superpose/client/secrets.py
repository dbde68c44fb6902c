"""``client.secrets`` and ``superpose secret``: set, list and remove the lattice's secrets.

Names are checked here, by the rules every function's ``secrets=`` follows; values
are checked to be what an environment variable can hold, and never echoed, logged or
put in an error message.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from nats.js.kv import KeyValue

from superpose.code.settings import check_secret_name, check_secret_value
from superpose.lattice import secrets
from superpose.lattice.secrets import SecretInfo

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]


async def set_secret(kv: KeyValue, name: str, value: str) -> None:
    await secrets.write(kv, check_secret_name(name), check_secret_value(name, value))


async def list_secrets(kv: KeyValue) -> list[SecretInfo]:
    return await secrets.names(kv)


async def remove_secret(kv: KeyValue, name: str) -> None:
    await secrets.remove(kv, check_secret_name(name))


class Secrets:
    """The lattice's secrets, from a script: ``client.secrets.set("STRIPE_KEY", value)``.

    Executors started after a change read the new value; those already running keep
    the one they started with until they stop (``docs/architecture.md``).
    """

    def __init__(self, kv: KeyValue, run: Run[Any]) -> None:
        self._kv = kv
        self._run = run

    def set(self, name: str, value: str) -> None:
        """Set (or replace) secret ``name``."""
        self._run(set_secret(self._kv, name, value))

    def ls(self) -> list[SecretInfo]:
        """Every secret's name and when it was set; never the values."""
        found: list[SecretInfo] = self._run(list_secrets(self._kv))
        return found

    def rm(self, name: str) -> None:
        """Remove secret ``name`` (NotFoundError if it is not set)."""
        self._run(remove_secret(self._kv, name))
