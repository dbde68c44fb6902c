"""Secrets in the lattice: the ``sp_secrets`` bucket, written by ``superpose secret`` and
read by the executors of the functions that name them.

The values are stored as they are (UTF-8): the embedded server encrypts its whole
store at rest (``local/embedded.py``; docs/architecture.md says why this and not a key
of our own). Nothing here logs, formats or returns a value except ``read``, whose
caller (an executor about to run a function) puts them into its environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KeyValue

from superpose import protocol
from superpose.errors import NotFoundError
from superpose.lattice.kv_listing import current_entries


class SecretNotSet(NotFoundError):
    """A function names a secret nobody has set."""

    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name} is not set (superpose secret set {name})")
        self.name = name


@dataclass(frozen=True)
class SecretInfo:
    """A secret as ``secret ls`` shows it: its name and when it was set, never its value."""

    name: str
    updated: float
    """Epoch seconds."""


async def read(kv: KeyValue, wanted: list[str]) -> dict[str, str]:
    """The values of ``wanted``; SecretNotSet for the first one missing."""
    values: dict[str, str] = {}
    for name in wanted:
        try:
            entry = await kv.get(protocol.secret_key(name))
        except nats.js.errors.KeyNotFoundError:
            raise SecretNotSet(name) from None
        if not entry.value:
            raise SecretNotSet(name)
        values[name] = entry.value.decode()
    return values


async def write(kv: KeyValue, name: str, value: str) -> None:
    await kv.put(protocol.secret_key(name), value.encode())


async def remove(kv: KeyValue, name: str) -> None:
    """Remove a secret and every stored revision of it (a purge, not a delete marker)."""
    await _must_be_set(kv, name)
    await kv.purge(protocol.secret_key(name))


async def _must_be_set(kv: KeyValue, name: str) -> None:
    """NotFoundError unless ``name`` is set."""
    if name not in {s.name for s in await names(kv)}:
        raise NotFoundError(f"no secret named {name} is set (see `superpose secret ls`)")


async def names(kv: KeyValue) -> list[SecretInfo]:
    """Every secret set, by name; read from the bucket's headers only, so the values
    never leave the server for a listing."""
    found = [
        SecretInfo(entry.key, entry.created) for entry in await current_entries(kv, meta_only=True)
    ]
    return sorted(found, key=lambda s: s.name)
