"""What code running on a node knows about where it runs.

Inside an executor, ``current()`` describes the hosted bundle and the call in
progress; outside one it is None. Futures use ``blocking()`` so a function
waiting on its children gives its slot back to the node (no deadlock on a
small lattice), and takes it back when it resumes.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from superpose import protocol
from superpose.errors import BadRequestError

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

CallerOpener: TypeAlias = "Callable[[NATS, str | None], Awaitable[None]]"
"""Opens, on an executor's connection, the client its user code's nested calls go
through, named by the executor's id (its NATS user's name, whose subjects it may
subscribe to; None: any name). The node side is handed one (``cli/executor.py``): it
never imports the caller's side, it only calls this."""


@dataclass
class Invocation:
    """The call a piece of user code is running on behalf of."""

    id: str
    app: str
    fn: str
    ctx: protocol.CallContext
    env: str = ""
    """The environment it runs with: nested calls of the same bundle run with it too."""
    call: protocol.Invocation | None = field(default=None, repr=False)
    """The invocation as it arrived: what lineage records to run it again."""
    idempotent: bool = False
    """Its function was declared safe to run twice (``idempotent=True``)."""
    raw_args: protocol.Buffer | None = field(default=None, repr=False)
    """Its arguments' bytes when its caller offered them (the offer dies with the caller)."""
    lineage: protocol.LineageRecord | None = field(default=None, repr=False)
    """Its lineage record, once an object it put needed one (made once per call)."""


@dataclass
class NodeRuntime:
    """Installed by the executor process once it hosts a bundle."""

    node_id: str
    app: str
    digest: str
    on_block: Callable[[str], None] = field(repr=False)
    on_unblock: Callable[[str], None] = field(repr=False)
    app_connection: Callable[[], Awaitable[NATS]] | None = field(default=None, repr=False)
    """The executor's connection as its *app user* (waited for: it opens in the
    background), the only one that may touch ``app``'s dicts, queues and cache entries;
    None when the executor has no app user (no signer: its one connection may)."""


StartHook: TypeAlias = Callable[[], object]
"""``@sp.on_start``: a function of no arguments, sync or async."""
_start_hooks: list[StartHook] = []

_runtime: NodeRuntime | None = None
current_invocation: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar(
    "superpose_invocation", default=None
)


def install(runtime: NodeRuntime) -> None:
    global _runtime
    _runtime = runtime


def current() -> NodeRuntime | None:
    return _runtime


def child_context() -> protocol.CallContext:
    """The context a nested call inherits from the call it is made in."""
    parent = current_invocation.get()
    if parent is None:
        return protocol.CallContext()
    return protocol.CallContext(
        log_to=parent.ctx.log_to,
        trace_id=parent.ctx.trace_id or parent.id,
        parent_id=parent.id,
        depth=parent.ctx.depth + 1,
        session=parent.ctx.session,
        pins=parent.ctx.pins,
        trace=parent.ctx.trace,
    )


@contextmanager
def blocking() -> Iterator[None]:
    """Around a wait on other invocations: frees this call's slot meanwhile."""
    invocation = current_invocation.get()
    if _runtime is None or invocation is None:
        yield
        return
    _runtime.on_block(invocation.id)
    try:
        yield
    finally:
        _runtime.on_unblock(invocation.id)


T = TypeVar("T")
PATIENCE_S = 1.0
"""How long a call holds its slot while it waits on something that may take long."""


def wait_patiently(future: concurrent.futures.Future[T], patience_s: float = PATIENCE_S) -> T:
    """``future``'s result, from a call's own thread: after ``patience_s`` the call
    waits as a blocked parent does (``blocking``), its slot back with the node, so
    what it waits for (a queue's next item, an object made again) can run."""
    try:
        return future.result(timeout=patience_s)
    except concurrent.futures.TimeoutError:
        pass
    with blocking():
        return future.result()


def on_start(fn: StartHook | None = None, /) -> StartHook:
    """Run ``fn`` once in each executor of this app, before its first call there: load a
    model, open a connection pool. (Registered when its module is imported; a module
    imported only on the caller's side registers it there too, where it never runs.)

    If it raises, that call fails with kind ``prepare`` naming the hook, and the
    executor is replaced: the next call gets a fresh one, which runs it again.
    """
    if fn is None:
        raise BadRequestError("@sp.on_start takes no options: write it without parentheses")
    if not callable(fn):
        raise BadRequestError(f"@sp.on_start needs a function, got {fn!r}")
    required = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        raise BadRequestError(
            f"@sp.on_start hook {hook_name(fn)} must take no arguments (it has "
            f"{', '.join(required)}): nothing calls it but the executor"
        )
    _start_hooks.append(fn)
    return fn


def start_hooks() -> list[StartHook]:
    """Every hook registered in this process so far, in the order their modules ran."""
    return _start_hooks


def hook_name(fn: StartHook) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
