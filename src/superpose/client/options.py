"""How a call runs: a function's settings and a call's overrides, validated at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from superpose import protocol
from superpose.code.settings import recorded_settings, settings_of
from superpose.errors import BadRequestError
from superpose.registry.placement import check_needs


@dataclass(frozen=True, kw_only=True)
class Options:
    """Per-function settings; validated here so a typo fails at decoration time."""

    retries: int = 0
    """Retries after an infrastructure failure (node crash, no node, executor died)."""
    timeout: float | None = None
    """Seconds before the invocation is killed and reported as a timeout (default 300)."""
    memory: int | None = None
    """MiB of resident memory the executor may use while running this function."""
    concurrency: int | None = None
    """Async functions: how many invocations one executor runs at once."""
    idempotent: bool = False
    """Safe to run twice: a direct call is retried when its node dies, and a slow
    ``map`` item gets a speculative duplicate."""
    retry_on: tuple[str, ...] = ()
    """Exception types (or their names) a durable invocation is retried on."""
    idempotency_key: str | None = None
    """A durable submission with a key already used returns that invocation, not a new run."""
    straggler_factor: float = 3.0
    """``map`` of an idempotent function: duplicate an item slower than this × the median."""
    needs: dict[str, str] | None = None
    """Node labels the call must run on, e.g. ``{"gpu": "1"}`` (``"*"``: label present)."""
    region: str | None = None
    """Shorthand for the need ``region=<region>``."""
    wait_for_node: float = 0.0
    """Seconds to wait for a node meeting the needs to join, instead of failing at once."""
    session: str | None = None
    """The session a canary split hashes: the same session sees the same versions,
    in this call and every call nested under it."""
    pins: dict[str, str] | None = None
    """App → version for this call and every call nested under it."""
    trace: bool = False
    """Record which version of each function answered, down the call graph."""
    secrets: tuple[str, ...] | None = None
    """Names of secrets (``superpose secret set``) its executor gets as environment
    variables; None: those the deployed version recorded."""
    env: dict[str, str] | None = None
    """Environment variables its executor sets; None: those the deployed version recorded."""
    cache: bool | None = None
    """Memoize: an identical later call (same version, environment, function and
    arguments) returns the stored result without running; None: what deploy recorded."""
    cache_ttl: float | None = None
    """Seconds a cached result is returned (at most 7 days); None: that limit."""
    memo_ask: protocol.MemoAsk | None = None
    """Not a setting: ``client/memo.py`` puts here the key of the cached call this one
    runs, for its executor to check and store the result under."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "retry_on", _exception_names(self.retry_on))
        object.__setattr__(self, "needs", check_needs(self.needs) or None)
        self._check_settings()
        if self.region is not None and not protocol.is_valid_name(str(self.region)):
            raise BadRequestError(f"region must be a label value like 'eu', got {self.region!r}")
        if not (isinstance(self.wait_for_node, int | float) and self.wait_for_node >= 0):
            raise BadRequestError(
                f"wait_for_node must be a number of seconds ≥ 0, got {self.wait_for_node!r}"
            )
        if self.idempotency_key is not None and not (
            isinstance(self.idempotency_key, str) and 0 < len(self.idempotency_key) <= 1024
        ):
            raise BadRequestError(
                f"idempotency_key must be a non-empty string of ≤ 1024 characters, "
                f"got {self.idempotency_key!r}"
            )
        if not (isinstance(self.straggler_factor, int | float) and self.straggler_factor > 1):
            raise BadRequestError(
                f"straggler_factor must be a number > 1, got {self.straggler_factor!r}"
            )
        self._check_cache()
        if not isinstance(self.retries, int) or self.retries < 0:
            raise BadRequestError(f"retries must be a whole number ≥ 0, got {self.retries!r}")
        if self.timeout is not None and not (
            isinstance(self.timeout, int | float) and self.timeout > 0
        ):
            raise BadRequestError(f"timeout must be a number of seconds > 0, got {self.timeout!r}")
        if self.memory is not None and not (isinstance(self.memory, int) and self.memory >= 16):
            raise BadRequestError(f"memory must be a whole number of MiB ≥ 16, got {self.memory!r}")
        if self.concurrency is not None and not (
            isinstance(self.concurrency, int) and self.concurrency >= 1
        ):
            raise BadRequestError(f"concurrency must be ≥ 1, got {self.concurrency!r}")

    def _check_cache(self) -> None:
        if self.cache is not None and not isinstance(self.cache, bool):
            raise BadRequestError(f"cache must be True or False, got {self.cache!r}")
        ttl = self.cache_ttl
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
            raise BadRequestError(f"cache_ttl must be a number of seconds > 0, got {ttl!r}")
        if ttl is not None and not 0 < ttl <= protocol.MEMO_MAX_AGE_S:
            raise BadRequestError(
                f"cache_ttl must be > 0 and at most {protocol.MEMO_MAX_AGE_S:g} s (7 days), "
                f"got {ttl!r}"
            )

    def _check_settings(self) -> None:
        """``secrets`` and ``env`` by the rules deploy applies to the recorded ones."""
        if self.secrets is None and self.env is None:
            return
        own = settings_of(self.secrets, self.env) or protocol.ExecutorSettings()
        if self.secrets is not None:
            object.__setattr__(self, "secrets", tuple(own.secrets))
        if self.env is not None:
            object.__setattr__(self, "env", dict(own.env))

    def settings(self, recorded: dict[str, Any]) -> protocol.ExecutorSettings | None:
        """The executor settings of a call: these options', else what deploy recorded."""
        if self.secrets is None and self.env is None:
            if "secrets" not in recorded and "env" not in recorded:
                return None  # the common case, per call: nothing to check
            return recorded_settings(recorded)
        secrets = self.secrets if self.secrets is not None else recorded.get("secrets")
        env = self.env if self.env is not None else recorded.get("env")
        return settings_of(secrets, env)

    def node_options(self) -> dict[str, Any]:
        return {
            "timeout_s": self.timeout,
            "memory_mb": self.memory,
            "concurrency": self.concurrency,
        }


def _exception_names(items: Any) -> tuple[str, ...]:
    """``retry_on`` as type names: the node matches them against the error's classes."""
    if isinstance(items, type | str):
        items = (items,)
    names: list[str] = []
    for item in items or ():
        if isinstance(item, str) and item:
            names.append(item)
        elif isinstance(item, type) and issubclass(item, BaseException):
            module = item.__module__
            names.append(
                item.__qualname__
                if module in ("builtins", "__main__")
                else f"{module}.{item.__qualname__}"
            )
        else:
            raise BadRequestError(f"retry_on takes exception classes or names, got {item!r}")
    return tuple(names)
