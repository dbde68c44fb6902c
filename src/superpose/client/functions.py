"""``@superpose.function`` and handles on deployed functions: the user's call surface."""

from __future__ import annotations

import functools
import inspect
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, overload

from superpose import protocol, runtime
from superpose.client.futures import Future
from superpose.client.stragglers import Stragglers
from superpose.errors import BadRequestError
from superpose.registry.mirror import Target
from superpose.registry.placement import check_needs

if TYPE_CHECKING:
    from superpose.client.client import Client

MAP_WINDOW = 4096
"""How many map items are in flight at once: bounds client memory on huge maps."""


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "retry_on", _exception_names(self.retry_on))
        object.__setattr__(self, "needs", check_needs(self.needs) or None)
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

    def node_options(self) -> dict[str, Any]:
        return {
            "timeout_s": self.timeout,
            "memory_mb": self.memory,
            "concurrency": self.concurrency,
        }


class _Remote:
    """``f.remote(...)`` runs and waits; ``await f.remote.aio(...)`` does so from async code."""

    def __init__(self, owner: Invocable) -> None:
        self._owner = owner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._owner._submit(args, kwargs, durable=False).result()

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        return await self._owner._submit(args, kwargs, durable=False)


class Invocable:
    """What every remote function offers: remote, spawn, map, options."""

    options_: Options
    app: str | None = None
    """The deployed app a handle names (its canary key may read the call's arguments)."""
    fn: str | None = None
    """The function's name in that app."""

    def __init__(self, options: Options) -> None:
        self.options_ = options
        self.remote = _Remote(self)

    def _target(self, client: Client, ctx: protocol.CallContext | None = None) -> Target:
        raise NotImplementedError

    def _client(self) -> Client:
        from superpose.client import client

        return client.current_client()

    def spawn(self, *args: Any, **kwargs: Any) -> Future:
        """Start the function on the lattice, durably; returns a future of its result.

        The invocation is persisted before the future reports it accepted: a node
        dying, or the broker restarting, does not lose it.
        """
        return self._submit(args, kwargs, durable=True)

    def _submit(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, durable: bool) -> Future:
        client = self._client()
        ctx = client.call_context(self.options_, self.app, kwargs, fn=self.fn, args=args)
        target = self._target(client, ctx)
        return client.submit(target, args, kwargs, self.options_, durable=durable, ctx=ctx)

    def map(self, *iterables: Iterable[Any], window: int = MAP_WINDOW) -> Iterator[Any]:
        """Results of the function over the items, in order, as soon as each is ready."""
        client = self._client()
        ctx = client.call_context(self.options_, self.app)
        target = self._target(client, ctx)
        items = zip(*iterables, strict=False)
        total = _length(iterables)
        in_flight: deque[Future] = deque()
        stragglers = Stragglers(client, self.options_) if self.options_.idempotent else None
        try:
            with client.progress(total, f"{target.app}.{target.fn}") as advance:
                for item in items:
                    future = client.submit(target, item, {}, self.options_, durable=True, ctx=ctx)
                    in_flight.append(future)
                    if stragglers is not None:
                        stragglers.track(future)
                    if len(in_flight) >= window:
                        # Refill in bursts, not one by one: a burst travels in few
                        # envelopes (one fsync each), a trickle in one envelope per item.
                        while len(in_flight) > window // 2:
                            yield _next(in_flight, stragglers)
                            advance()
                while in_flight:
                    yield _next(in_flight, stragglers)
                    advance()
        finally:  # stopped early (break, error, close): cancel what is still out there
            if in_flight:
                client.cancel_many([f for f in in_flight if not f.done()])

    def with_options(self, **overrides: Any) -> Invocable:
        clone = _copy(self)
        clone.options_ = replace(self.options_, **overrides)
        clone.remote = _Remote(clone)
        return clone

    options = with_options


def _next(in_flight: deque[Future], stragglers: Stragglers | None) -> Any:
    head = in_flight[0]
    if stragglers is not None:
        stragglers.wait(head)
    in_flight.popleft()
    return head.result()


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


def _copy(obj: Invocable) -> Invocable:
    clone = object.__new__(type(obj))
    clone.__dict__.update(obj.__dict__)
    return clone


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


class Function(Invocable):
    """A plain Python function that can also run on the lattice."""

    def __init__(self, fn: Callable[..., Any], options: Options) -> None:
        super().__init__(options)
        self.local = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self._targets: dict[str, Target] = {}
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling the function directly runs it here, like the plain function."""
        return self.local(*args, **kwargs)

    def node_options(self) -> dict[str, Any]:
        return self.options_.node_options()

    def _target(self, client: Client, ctx: protocol.CallContext | None = None) -> Target:
        """On a node: the bundle the executor hosts. Elsewhere: the script's bundle,
        looked up per call (cheap) because it changes when local modules are imported."""
        module, name, qualname = self.local.__module__, self.local.__name__, self.local.__qualname__
        node = runtime.current()
        if node is not None and module in sys.modules and _in_bundle(module):
            key = client.id
            if key not in self._targets:
                invocation = runtime.current_invocation.get()
                app = invocation.app if invocation is not None else node.app
                self._targets[key] = Target(app, name, node.digest, module, qualname)
            return self._targets[key]
        digest, module_in_bundle, app = client.script_bundle(module)
        if digest not in self._targets:
            self._targets[digest] = Target(app, name, digest, module_in_bundle, qualname)
        return self._targets[digest]


def _in_bundle(module: str) -> bool:
    """True for modules loaded from the bundle the executor hosts (not from site-packages)."""
    file = getattr(sys.modules[module], "__file__", "") or ""
    return bool(sys.path) and file.startswith(sys.path[0])


class RemoteFunction(Invocable):
    """A handle on a deployed function, by name: ``client.function("shop.checkout")``."""

    fn: str

    def __init__(self, app: str, fn: str, version: str | None, options: Options) -> None:
        super().__init__(options)
        self.app_name, self.fn, self.version = app, fn, version
        self.app = app
        self._bound_client: Client | None = None

    def _client(self) -> Client:
        return self._bound_client or super()._client()

    def _target(self, client: Client, ctx: protocol.CallContext | None = None) -> Target:
        return client.resolve(self.app_name, self.fn, self.version, ctx)

    def __repr__(self) -> str:
        at = f"@{self.version}" if self.version else ""
        return f"<superpose function {self.app_name}.{self.fn}{at}>"


@overload
def function(fn: Callable[..., Any], /) -> Function: ...
@overload
def function(
    *,
    retries: int = 0,
    timeout: float | None = None,
    memory: int | None = None,
    concurrency: int | None = None,
    idempotent: bool = False,
    retry_on: tuple[type[BaseException] | str, ...] = (),
    needs: dict[str, str] | None = None,
    region: str | None = None,
    wait_for_node: float = 0.0,
) -> Callable[[Callable[..., Any]], Function]: ...


def function(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    retries: int = 0,
    timeout: float | None = None,
    memory: int | None = None,
    concurrency: int | None = None,
    idempotent: bool = False,
    retry_on: tuple[type[BaseException] | str, ...] = (),
    needs: dict[str, str] | None = None,
    region: str | None = None,
    wait_for_node: float = 0.0,
) -> Function | Callable[[Callable[..., Any]], Function]:
    """Mark a function as runnable on the lattice (``@sp.function`` or ``@sp.function(...)``)."""
    options = Options(
        retries=retries,
        timeout=timeout,
        memory=memory,
        concurrency=concurrency,
        idempotent=idempotent,
        retry_on=retry_on,  # type: ignore[arg-type]
        needs=needs,
        region=region,
        wait_for_node=wait_for_node,
    )

    def wrap(f: Callable[..., Any]) -> Function:
        if not callable(f):
            raise BadRequestError(f"@superpose.function needs a function, got {f!r}")
        if not protocol.is_valid_name(f.__name__):
            raise BadRequestError(f"function name {f.__name__!r} cannot be used on the lattice")
        return Function(f, options)

    return wrap(fn) if fn is not None else wrap


class LinkedApp:
    """Another app's functions, resolved by name at call time (``sp.use("pricing")``).

    Nothing is bound at import or deploy time: each call resolves the version
    the calling app's runtime lockfile names (``superpose lock``), else the
    canary or ``latest`` rules, so deploying a new ``pricing`` changes what
    every app using it runs without redeploying them.
    """

    def __init__(self, app: str) -> None:
        if not isinstance(app, str) or not protocol.is_valid_name(app):
            raise BadRequestError(
                f"sp.use takes an app name (letters, digits, _ and -), got {app!r}"
            )
        self._app = app

    def __getattr__(self, fn: str) -> RemoteFunction:
        if fn.startswith("__") or not protocol.is_valid_name(fn):
            raise AttributeError(fn)
        return RemoteFunction(self._app, fn, None, Options())

    def function(self, fn: str) -> RemoteFunction:
        """The same as attribute access, for names that are not identifiers (``my-fn``)."""
        if not protocol.is_valid_name(fn):
            raise BadRequestError(f"{fn!r} is not a function name")
        return RemoteFunction(self._app, fn, None, Options())

    def __repr__(self) -> str:
        return f"<superpose app {self._app}>"


def use(app: str) -> LinkedApp:
    """Use another deployed app's functions: ``pricing = sp.use("pricing")``, then
    ``pricing.quote.remote(...)``."""
    return LinkedApp(app)
