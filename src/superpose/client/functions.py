"""``@superpose.function`` and handles on deployed functions: the user's call surface."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, overload

from superpose import protocol, runtime
from superpose.client import memo, session
from superpose.client.futures import Future
from superpose.client.mapping import check_window, map_results
from superpose.client.options import Options
from superpose.client.progress import progress_bar
from superpose.client.stragglers import Stragglers
from superpose.code import by_value, signatures
from superpose.code.include import DECLARED, check_patterns
from superpose.code.requirements import PIP_DECLARED, check_pip
from superpose.code.schedules import Schedule, check_schedule, unscheduled_reason
from superpose.errors import ArgumentError, BadRequestError, SerializationError
from superpose.registry.mirror import Target

if TYPE_CHECKING:
    from superpose.client.client import Client

MAP_WINDOW = 4096
"""How many map items are in flight at once: bounds client memory on huge maps."""


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
        return session.current_client()

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
        return _send(client, target, args, kwargs, self.options_, durable=durable, ctx=ctx)

    def map(
        self,
        *iterables: Iterable[Any],
        window: int = MAP_WINDOW,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        progress: bool = True,
    ) -> Iterator[Any]:
        """The function over the items (one argument from each iterable), durably.

        Results come in the items' order (``order_outputs=False``: as each finishes).
        A failed item raises its exception and cancels the rest, or, with
        ``return_exceptions=True``, its exception is yielded in its place and the map
        goes on. At most ``window`` items are on the lattice at once. A progress bar
        shows while someone watches (a terminal or a notebook) unless ``progress=False``.
        """
        window = check_window(window)
        client = self._client()
        ctx = client.call_context(self.options_, self.app)
        target = self._target(client, ctx)
        cached = memo.wanted(self.options_, target)
        speculate = self.options_.idempotent and not cached
        stragglers = Stragglers(client, self.options_) if speculate else None

        def submit(item: tuple[Any, ...]) -> Future:
            try:
                return _send(client, target, item, {}, self.options_, durable=True, ctx=ctx)
            except (ArgumentError, SerializationError) as exc:
                if not return_exceptions:  # at once: the same mistake is likely in every item
                    raise
                failed = Future()  # this item's outcome, in its place
                failed.set_exception(exc)
                return failed

        label = f"{target.app}.{target.fn}"
        with progress_bar(_length(iterables), label, enabled=progress) as advance:
            yield from map_results(
                submit,
                zip(*iterables, strict=False),
                window=window,
                order_outputs=order_outputs,
                return_exceptions=return_exceptions,
                stragglers=stragglers,
                advance=advance,
                cancel=client.cancel_many,
            )

    def with_options(self, **overrides: Any) -> Invocable:
        clone = _copy(self)
        clone.options_ = replace(self.options_, **overrides)
        clone.remote = _Remote(clone)
        return clone

    options = with_options


def _send(
    client: Client,
    target: Target,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Options,
    *,
    durable: bool,
    ctx: protocol.CallContext,
) -> Future:
    """Submit one call: through the cache when it is a ``cache=True`` call."""
    if memo.wanted(options, target):
        return memo.submit(client, target, args, kwargs, options, durable=durable, ctx=ctx)
    return client.submit(target, args, kwargs, options, durable=durable, ctx=ctx)


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

    schedule: Schedule | None = None
    """When a deployed app runs it by itself (script mode has no schedules)."""

    def __init__(
        self, fn: Callable[..., Any], options: Options, schedule: Schedule | None = None
    ) -> None:
        super().__init__(options)
        self.schedule = schedule
        self.local = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self.by_value = by_value.defined_interactively(fn)
        """No file to import on a node (a notebook, the REPL): it travels pickled."""
        self.hosted_as: str | None = None
        """On a node, its name in the by-value bundle the executor hosts."""
        self._targets: dict[str, Target] = {}
        self._signature = signatures.from_function(fn)
        """Checked against each call's arguments before it leaves."""
        functools.update_wrapper(self, fn)

    def __getstate__(self) -> dict[str, Any]:
        """Sent as an argument or inside a by-value bundle: without this process's
        caches, and with its name in the bundle when one is being packed."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("remote", "_targets")}
        state["hosted_as"] = by_value.name_in_bundle(self, self.local.__name__)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.remote = _Remote(self)
        self._targets = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling the function directly runs it here, like the plain function."""
        return self.local(*args, **kwargs)

    def node_options(self) -> dict[str, Any]:
        return self.options_.node_options()

    def _target(self, client: Client, ctx: protocol.CallContext | None = None) -> Target:
        """On a node: the bundle the executor hosts. Elsewhere: the script's bundle,
        looked up per call (cheap) because it changes when local modules are imported."""
        if self.by_value:
            return self._value_target(client)
        module, name, qualname = self.local.__module__, self.local.__name__, self.local.__qualname__
        node = runtime.current()
        if node is not None and module in sys.modules and _in_bundle(module):
            key = client.id
            if key not in self._targets:
                invocation = runtime.current_invocation.get()
                app = invocation.app if invocation is not None else node.app
                env = invocation.env if invocation is not None else ""
                self._targets[key] = Target(
                    app, name, node.digest, module, qualname, signature=self._signature, env=env
                )
            return self._targets[key]
        digest, module_in_bundle, app = client.script_bundle(module)
        env = client.script_env(module)
        key = protocol.version_id(digest, env)
        if key not in self._targets:
            self._targets[key] = Target(
                app, name, digest, module_in_bundle, qualname, signature=self._signature, env=env
            )
        return self._targets[key]

    def _value_target(self, client: Client) -> Target:
        """A function with no file: in the by-value bundle the executor hosts, when it
        came in it; elsewhere in a by-value bundle of its own."""
        name = self.local.__name__
        node = runtime.current()
        invocation = runtime.current_invocation.get() if node is not None else None
        if node is not None and self.hosted_as is not None:
            digest, hosted = node.digest, self.hosted_as
            env = invocation.env if invocation is not None else ""
        else:
            fn: Any = self.local
            digest, hosted = client.value_bundle(self, name, fn), name
            env = client.value_env(self)
        key = protocol.version_id(digest, env)
        found = self._targets.get(key)
        if found is None:
            app = invocation.app if invocation is not None else by_value.APP
            found = self._targets[key] = Target(
                app,
                name,
                digest,
                by_value.LOADER_MODULE,
                hosted,
                signature=self._signature,
                env=env,
            )
        return found


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
    include: Iterable[str] | str | None = None,
    schedule: Schedule | None = None,
    pip: Iterable[str] | str | None = None,
    secrets: Iterable[str] | None = None,
    env: dict[str, str] | None = None,
    cache: bool | None = None,
    cache_ttl: float | None = None,
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
    include: Iterable[str] | str | None = None,
    schedule: Schedule | None = None,
    pip: Iterable[str] | str | None = None,
    secrets: Iterable[str] | None = None,
    env: dict[str, str] | None = None,
    cache: bool | None = None,
    cache_ttl: float | None = None,
) -> Function | Callable[[Callable[..., Any]], Function]:
    """Mark a function as runnable on the lattice (``@sp.function`` or ``@sp.function(...)``).

    ``include`` names data files (globs relative to the script's folder) that the
    script's bundle carries, so they open on the node by the same relative path.
    ``schedule=sp.Period(...)`` or ``sp.Cron("...")`` has a deployed app run it with no
    caller; it is checked here, so the same file works in script mode, which ignores it.
    ``pip`` names packages from the index (``["numpy>=2"]``): in script mode the union of
    a script's functions' ``pip=`` is resolved at its first call into the environment
    its calls run with; a deployed app's are added to what its folder declares.
    ``secrets=["STRIPE_KEY"]`` and ``env={"MODE": "prod"}`` become environment variables of
    the executors that run this function, and of no other function's.
    ``cache=True`` memoizes it: an identical later call returns the stored result without
    running, for ``cache_ttl`` seconds at most (docs: README "Memoized functions").
    """
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
        secrets=secrets,  # type: ignore[arg-type]  # checked and made a tuple there
        env=env,
        cache=cache,
        cache_ttl=cache_ttl,
    )
    patterns = check_patterns(include)
    checked = check_schedule(schedule)
    packages = check_pip(pip)

    def wrap(f: Callable[..., Any]) -> Function:
        if not callable(f):
            raise BadRequestError(f"@superpose.function needs a function, got {f!r}")
        if not protocol.is_valid_name(f.__name__):
            raise BadRequestError(f"function name {f.__name__!r} cannot be used on the lattice")
        DECLARED.add(f.__module__, patterns)
        PIP_DECLARED.add(f.__module__, packages)
        if checked is not None:
            reason = unscheduled_reason(f.__name__, _required_params(f))
            if reason is not None:
                raise BadRequestError(reason)
        return Function(f, options, checked)

    return wrap(fn) if fn is not None else wrap


def _required_params(f: Callable[..., Any]) -> list[str]:
    """Parameters a call with no arguments would leave unfilled."""
    loose = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [
        p.name
        for p in inspect.signature(f).parameters.values()
        if p.default is inspect.Parameter.empty and p.kind not in loose
    ]


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
