"""Memoized calls (``cache=True``): an identical call returns the stored result.

A cached call looks its key up first (``memo_key.call_key``: version, environment,
function, arguments), in one batch with the other calls of its burst
(``memo_batch``). A stored result is returned without running anything. Absent,
the caller claims the key (a create-only write: of identical calls made at once, one
wins) and runs the call with the key attached; the executor that runs it checks that
the key is the hash of what it ran and stores the result (``node/executor/
memo_writes.py``), and the caller drops its claim when the call ends. The others wait
for that result (single flight). A failed call stores nothing, so a failure is never
cached. A claim older than the call's timeout (its runner died) is taken over by the
next caller. A caller never writes a result: one that could would hand its own to
every later caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superpose import protocol
from superpose.client import app_state, memo_batch
from superpose.client.arguments import check_call
from superpose.client.futures import Future, fail, settled
from superpose.client.options import Options
from superpose.lattice import memo_store, payload
from superpose.lattice.memo_key import FUTURE_TAG, Uncanonical, call_key, register_digest
from superpose.registry.mirror import Target
from superpose.support.retry import Backoff

if TYPE_CHECKING:
    from superpose.client.client import Client

log = logging.getLogger("superpose.memo")

WAIT_POLLS = Backoff(0.002, factor=2, max_s=0.25)
"""Between looks of a caller waiting for another's run of the same call: soon at
first (a short call's result is there in milliseconds), at most four times a second."""
CLAIM_MARGIN_S = 60.0
"""A claim lasts the call's timeout plus this (queueing, start-up), then is stale."""
DEFAULT_TIMEOUT_S = 300.0


class UncachedWarning(UserWarning):
    """A ``cache=True`` call ran uncached: an argument has no canonical hash."""


@dataclass(frozen=True)
class Call:
    """One cached call, encoded and keyed, ready to run if nobody has its result."""

    client: Client
    target: Target
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: Options
    durable: bool
    ctx: protocol.CallContext | None
    key: str
    ttl_s: float

    def start(self) -> Future:
        """Run it as an uncached call would (direct for remote, durable for spawn; sent
        once its input futures are done, its Refs kept alive while it runs), with its
        key for the executor to store the result under. The arguments are pickled
        here, on a miss only: a hit never needs them."""
        ask = protocol.MemoAsk(self.key, self.ttl_s)
        options = dataclasses.replace(self.options, memo_ask=ask)
        return self.client.submit(
            self.target, self.args, self.kwargs, options, durable=self.durable, ctx=self.ctx
        )

    def start_uncached(self) -> Future:
        """Run it with nothing stored: the cache could not be reached."""
        return self.client.submit(
            self.target, self.args, self.kwargs, self.options, durable=self.durable, ctx=self.ctx
        )


def _future_digest(future: Future) -> bytes:
    """A cached call's future stands for its result by its key: what a cached call
    returns is a function of its key, so a memoized dataflow is keyed (and a rerun
    answered) without waiting for any input. Another future's value is not known yet."""
    if future.memo_key is None:
        raise Uncanonical("a Future of an uncached call (its value is not known yet)")
    return future.memo_key.encode()


register_digest(Future, _future_digest, tag=FUTURE_TAG)


def wanted(options: Options, target: Target) -> bool:
    """Cached if the call's options say so, else if its deployed version recorded it."""
    if options.cache is not None:
        return options.cache
    return bool(target.options.get("cache"))


def ttl_of(options: Options, target: Target) -> float:
    recorded = target.options.get("cache_ttl")
    ttl = options.cache_ttl if options.cache_ttl is not None else recorded
    if not isinstance(ttl, int | float) or ttl <= 0:
        return protocol.MEMO_MAX_AGE_S
    return min(float(ttl), protocol.MEMO_MAX_AGE_S)


def submit(
    client: Client,
    target: Target,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Options,
    *,
    durable: bool,
    ctx: protocol.CallContext | None,
) -> Future:
    """A cached call's future: the stored result, a shared run, or a run of its own.
    Arguments that do not fit the function raise here, as an uncached call's do; they
    are hashed (canonically) now and pickled only if the lookup misses. The lookup
    goes with the others of its burst (``memo_batch``)."""
    check_call(target, len(args), kwargs)
    own = app_state.hosted_app()
    if own is not None and target.app != own:  # its executor may not touch that app's
        _uncached_once(target, own)
        return client.submit(target, args, kwargs, options, durable=durable, ctx=ctx)
    try:
        key = call_key(target.app, target.fn, target.digest, target.env, args, kwargs)
    except Uncanonical as exc:
        _warn_once(target, str(exc))
        return client.submit(target, args, kwargs, options, durable=durable, ctx=ctx)
    call = Call(client, target, args, kwargs, options, durable, ctx, key, ttl_of(options, target))
    out = Future()
    out.memo_key = key
    memo_batch.lookups_of(client, _WAYS).add(call, out)
    return out


_WARNED: set[tuple[str, str, str]] = set()


def _warn_once(target: Target, reason: str) -> None:
    """One warning per function and reason: a map over such arguments says it once."""
    mark = (target.app, target.fn, reason)
    if mark in _WARNED:
        return
    _WARNED.add(mark)
    warnings.warn(UncachedWarning(f"{target.app}.{target.fn} ran uncached: {reason}"), stacklevel=4)


_OTHER_APPS: set[tuple[str, str]] = set()


def _uncached_once(target: Target, own: str) -> None:
    """Said once per function: a function of ``own`` calls a cached function of another
    app, whose cache entries its executor's app user may not read or write."""
    mark = (target.app, target.fn)
    if mark not in _OTHER_APPS:
        _OTHER_APPS.add(mark)
        log.info(
            "%s.%s runs uncached from app %s: a function may use only its own app's cache",
            target.app,
            target.fn,
            own,
        )


_STORES: weakref.WeakKeyDictionary[Client, memo_store.MemoStore] = weakref.WeakKeyDictionary()


async def store_of(client: Client) -> memo_store.MemoStore:
    """The client's handle on the memo buckets, opened on its first cached call. Inside
    a function whose executor has an app user, on that user's connection, looking keys
    up one by one (a batch direct get cannot be pinned to the app, so it may not)."""
    store = _STORES.get(client)
    if store is None:
        if app_state.hosted_app() is None:
            results, claims = await memo_store.open_buckets(client.assets.js)
            store = memo_store.MemoStore(results, claims, client.nc)
        else:
            nc = await app_state.app_connection(client)
            results, claims = await memo_store.open_buckets(nc.jetstream())
            store = memo_store.MemoStore(results, claims, nc)
            store.batch_allowed = False
        store = _STORES.setdefault(client, store)
    return store


async def settle(call: Call, out: Future) -> None:
    """Look again, claim or wait, run: a call whose batched lookup found no result."""
    try:
        store = await store_of(call.client)
        await _look_or_run(store, call, out)
    except Exception as exc:  # the cache failed, not the call: run it uncached
        if out.done():
            return
        log.warning("cache of %s.%s unavailable (%s): running uncached", *_name(call), exc)
        _follow(call.start_uncached(), out)


async def _look_or_run(store: memo_store.MemoStore, call: Call, out: Future) -> None:
    """Claim the key at once (the batched lookup just missed: the common case is that
    nobody has it); taken, wait for the result while the claim is live, then take over
    a stale claim. Claimed, look once more: a runner that stored its result and dropped
    its claim since our lookup has answered it."""
    revision = await store.claim(call.key, _claim(call), 0)
    waits = 0
    while not out.done():
        if revision is not None:
            entry = (await store.look(call.key)).entry
            if entry is None or entry.until <= time.time():
                await _run(store, call, revision, out)
                return
            await _release(store, call.key, revision)
            hit(call, entry, out)
            return
        entry = (await store.look(call.key)).entry
        if entry is not None and entry.until > time.time():
            hit(call, entry, out)
            return
        found = await store.look_claim(call.key)
        if found.entry is not None and found.entry.until > time.time():
            waits += 1
            await asyncio.sleep(WAIT_POLLS.pause_s(waits))  # another caller runs it
            continue
        revision = await store.claim(call.key, _claim(call), found.revision)
    if revision is not None:  # cancelled after claiming: the next caller runs it
        await _release(store, call.key, revision)


def _claim(call: Call) -> protocol.MemoEntry:
    now = time.time()
    until = now + _claim_s(call.options)
    return protocol.MemoEntry(running=True, until=until, created=now, runner=call.client.id)


def _claim_s(options: Options) -> float:
    return (options.timeout or DEFAULT_TIMEOUT_S) + CLAIM_MARGIN_S


def hit(call: Call, entry: protocol.MemoEntry, out: Future) -> None:
    """Answer ``out`` from a stored result (on the client's loop)."""
    if entry.stored:  # too big for its entry: read from beside it first
        asyncio.get_running_loop().create_task(_hit_stored(call, entry, out))
        return
    try:
        value = payload.decode_value(entry.value, entry.codec)
    except Exception as exc:
        fail(out, exc)
        return
    _answer(call, value, out)


async def _hit_stored(call: Call, entry: protocol.MemoEntry, out: Future) -> None:
    """A big result's bytes, read by the digest its entry names. Gone (expired before
    its entry, or altered): the call runs again and its executor stores it anew."""
    try:
        data = await (await store_of(call.client)).value(entry)
        value = payload.decode_value(data, entry.codec)
    except Exception as exc:
        log.info("cached result of %s.%s unreadable (%s): running it", *_name(call), exc)
        _follow(call.start(), out)
        return
    _answer(call, value, out)


def _answer(call: Call, value: Any, out: Future) -> None:
    """``out`` is the stored result: cached, accepted, traced as no node's."""
    out.cached = True
    out.accepted.set()
    log.info("cached %s.%s %s", *_name(call), call.key.rsplit(".", 1)[-1][:12])
    if call.ctx is not None and call.ctx.trace:
        asyncio.get_running_loop().create_task(_trace_hit(call, call.ctx))
    if not out.done():
        out.set_result(value)


async def _trace_hit(call: Call, ctx: protocol.CallContext) -> None:
    """A traced request's span for a call answered from the cache: ``cached``, by no node."""
    trace_id = ctx.trace_id or uuid.uuid4().hex[:16]
    span = protocol.Span(
        trace_id=trace_id,
        id=uuid.uuid4().hex[:16],
        parent_id=ctx.parent_id,
        app=call.target.app,
        fn=call.target.fn,
        digest=protocol.version_id(call.target.digest, call.target.env),
        node=CACHE_NODE,
        started=time.time(),
        duration_s=0.0,
        ok=True,
        session=ctx.session,
        cached=True,
    )
    try:
        await call.client.nc.publish(protocol.trace_subject(trace_id), span.encode())
    except Exception:  # a trace is a diagnosis: never the call's failure
        log.debug("could not record the cached span of %s.%s", *_name(call), exc_info=True)


CACHE_NODE = "cache"
"""What a cached call's span names as its node."""


async def _run(store: memo_store.MemoStore, call: Call, revision: int, out: Future) -> None:
    """We hold the claim: run the call (its executor stores the result, not a failure),
    drop the claim, answer."""
    inner = call.start()
    _link(inner, out)
    try:
        await settled(inner)
    except BaseException as exc:
        await asyncio.shield(_release(store, call.key, revision))
        if isinstance(exc, asyncio.CancelledError) and inner.cancelled():
            out.cancel()
        else:
            fail(out, exc)
        if not isinstance(exc, Exception | asyncio.CancelledError):
            raise
        return
    out.adopt(inner)  # its executor stored the result before it answered
    await _release(store, call.key, revision)


async def _release(store: memo_store.MemoStore, key: str, revision: int) -> None:
    try:
        await store.release(key, revision)
    except Exception as exc:  # the claim goes stale by itself (waiters time out on it)
        log.warning("could not drop the cache claim %s: %s", key, exc)


def _link(inner: Future, out: Future) -> None:
    """``out`` stands for ``inner``: its id, its acceptance, its cancellation."""
    out.invocation_id = inner.invocation_id
    out.idempotency_key = inner.idempotency_key
    out.accepted = inner.accepted  # read afresh by whoever waits (``wait_accepted``)
    out.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)


def _follow(inner: Future, out: Future) -> None:
    """Resolve ``out`` with ``inner``'s outcome (the uncached fallback)."""
    _link(inner, out)

    def copy(done: Any) -> None:
        if out.done():
            return
        if done.cancelled():
            out.cancel()
        elif done.exception() is not None:
            out.set_exception(done.exception())
        else:
            out.set_result(done.result())

    inner.add_done_callback(copy)


def _name(call: Call) -> tuple[str, str]:
    return call.target.app, call.target.fn


_WAYS = memo_batch.Ways(store=store_of, hit=hit, miss=settle)
