"""Functions with secrets and env, for tests/test_secrets.py (script mode)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import superpose as sp

SECRET = "SP_TEST_KEY"
MISSING = "SP_TEST_NEVER_SET"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@sp.function(secrets=[SECRET], env={"MODE": "prod"})
def uses_secret() -> dict[str, object]:
    """Proves the value is here without sending it back."""
    return {"sha": _sha(os.environ[SECRET]), "mode": os.environ["MODE"], "pid": os.getpid()}


@sp.function(secrets=[SECRET])
def prints_env_keys() -> list[str]:
    print("environment:", " ".join(sorted(os.environ)))  # names, never values
    return sorted(os.environ)


@sp.function(secrets=[SECRET])
def fails_with_secret() -> None:
    if os.environ[SECRET]:
        raise ValueError("payment declined")


@sp.function
def env_of(name: str) -> tuple[str | None, int]:
    """What a function without settings sees."""
    return os.environ.get(name), os.getpid()


@sp.function(env={"MODE": "dev"})
def mode_dev() -> tuple[str | None, str | None, int]:
    return os.environ.get("MODE"), os.environ.get(SECRET), os.getpid()


@sp.function(secrets=[MISSING])
def needs_missing(marker: str) -> str:
    Path(marker).write_text("ran")
    return "ran"


@sp.function
async def async_env_of(name: str) -> str | None:
    return os.environ.get(name)
