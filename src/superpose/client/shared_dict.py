"""``sp.Dict``: a dictionary every process of an app (or of the lattice) shares.

Entries live in one JetStream key-value stream for all apps (``lattice/shared_kv.py``,
``protocol.DICTS_BUCKET``), in memory unless ``durable=True``, under
``<scope>.<dict>.<key>``. Every write is one acknowledged message, so a write either
lands whole or raises. ``incr`` and ``cas`` are compare-and-set loops on the key's
revision: the write names the revision it read, and a write in between makes it
read again.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from nats.aio.subscription import Subscription

from superpose import protocol
from superpose.client.shared_base import Shared, check_timeout, decode, dual, encode
from superpose.client.shared_names import (
    check_name,
    decode_key,
    encode_key,
    label,
    scope_of,
)
from superpose.errors import BadRequestError, LatticeError
from superpose.lattice import shared_kv

MIN_TTL_S = 1.0
"""nats-server's shortest per-message TTL."""
MAX_CAS_ATTEMPTS = 10_000
"""A compare-and-set that loses this often in a row gives up (a hot key under a
storm of writers): never a silent wrong count."""


@dataclass(frozen=True, slots=True)
class Change:
    """One change a ``watch`` saw: ``op`` is ``set`` (``value`` is the new value),
    ``delete`` or ``expired`` (``value`` is None)."""

    key: str
    value: Any
    op: str
    revision: int


def _check_ttl(ttl: float | None, where: str) -> float | None:
    if ttl is None:
        return None
    if not isinstance(ttl, int | float) or ttl < MIN_TTL_S:
        raise BadRequestError(
            f"{where}: ttl must be None or seconds ≥ {MIN_TTL_S:g} (the lattice's "
            f"shortest per-key TTL), got {ttl!r}"
        )
    return float(ttl)


class Dict(Shared):
    """A shared dictionary: ``d[k] = v``, ``d[k]``, ``del d[k]``, ``k in d``, ``get``,
    ``set``, ``incr``, ``cas``, ``keys``, ``watch``; each method also as ``.aio``.

    ``name``: letters, digits, ``_``, ``-``. ``ttl``: seconds each key lives after its
    last write (None: until deleted). ``shared=True``: lattice-wide, not the app's;
    ``app=``: another app's (a caller pinned to an app may use only its own).
    ``durable=True``: on file storage (survives a server restart), else in memory.
    Keys are strings; values any picklable object up to 1 MiB pickled.
    """

    def __init__(
        self,
        name: str,
        ttl: float | None = None,
        shared: bool = False,
        durable: bool = False,
        *,
        app: str | None = None,
    ) -> None:
        self.name = check_name("Dict", name)
        self.scope = scope_of("Dict", name, shared=shared, app=app)
        self.label = label("Dict", name, self.scope)
        self.ttl = _check_ttl(ttl, self.label)
        self.durable = durable
        self.bucket = protocol.dict_bucket(durable)

    def __repr__(self) -> str:
        return f"<sp.{self.label}>"

    def _key(self, key: object) -> str:
        return protocol.dict_key(self.scope, self.name, encode_key(key, self.label))

    def _where(self, key: object) -> str:
        return f"{self.label} key {key!r}"

    # --- the mapping protocol (sync) -------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        found, value = self.run(self._lookup(key), "get")
        if not found:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return self.contains(key)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    # --- methods, each also as ``.aio`` ---------------------------------------------

    async def _lookup(self, key: str) -> tuple[bool, Any]:
        entry = await shared_kv.get(await self.connection(), self.bucket, self._key(key))
        if entry.value is None:
            return False, None
        return True, decode(entry.value)

    @dual
    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it has none."""
        found, value = await self._lookup(key)
        return value if found else default

    @dual
    async def contains(self, key: str) -> bool:
        """Whether ``key`` has a value (``k in d``)."""
        return (await self._lookup(key))[0]

    @dual
    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """``d[key] = value``; ``ttl``: this key's lifetime, instead of the Dict's."""
        data = encode(value, self._where(key))
        ttl = _check_ttl(ttl, self._where(key)) if ttl is not None else self.ttl
        await shared_kv.put(await self.connection(), self.bucket, self._key(key), data, ttl_s=ttl)

    @dual
    async def delete(self, key: str) -> bool:
        """Remove ``key``; False when it had no value (``del d[k]`` raises KeyError)."""
        subject_key = self._key(key)
        for _ in range(MAX_CAS_ATTEMPTS):
            entry = await shared_kv.get(await self.connection(), self.bucket, subject_key)
            if entry.value is None:
                return False
            try:
                await shared_kv.delete(
                    await self.connection(), self.bucket, subject_key, last=entry.revision
                )
                return True
            except shared_kv.Conflict:
                continue
        raise self._contended(key)

    @dual
    async def incr(self, key: str, n: int = 1) -> int:
        """Add ``n`` to the integer at ``key`` (0 when it has none), atomically; the new
        value. Many processes incrementing at once each count exactly once."""
        if not isinstance(n, int) or isinstance(n, bool):
            raise BadRequestError(f"{self._where(key)}: incr adds an int, got {n!r}")

        def add(current: Any) -> tuple[bool, Any]:
            current = 0 if current is None else current
            if not isinstance(current, int) or isinstance(current, bool):
                raise BadRequestError(
                    f"{self._where(key)} holds a {type(current).__name__}; incr needs an int"
                )
            return True, current + n

        new: int = (await self._swap(key, add))[1]
        return new

    @dual
    async def cas(self, key: str, expected: Any, new: Any) -> bool:
        """Set ``key`` to ``new`` if its value equals ``expected`` (a key with no value
        equals None); whether it did."""
        encode(new, self._where(key))  # refused before reading anything
        return (await self._swap(key, lambda current: (current == expected, new)))[0]

    async def _swap(self, key: str, decide: Callable[[Any], tuple[bool, Any]]) -> tuple[bool, Any]:
        """A compare-and-set loop: ``decide(current value)`` says whether to write and
        what; the write names the revision read, and one that lost reads again. (whether
        it wrote, the value written or found)."""
        subject_key = self._key(key)
        for _ in range(MAX_CAS_ATTEMPTS):
            entry = await shared_kv.get(await self.connection(), self.bucket, subject_key)
            current = None if entry.value is None else decode(entry.value)
            write, new = decide(current)
            if not write:
                return False, current
            data = encode(new, self._where(key))
            try:
                await shared_kv.put(
                    await self.connection(),
                    self.bucket,
                    subject_key,
                    data,
                    ttl_s=self.ttl,
                    last=entry.revision,
                )
                return True, new
            except shared_kv.Conflict:
                continue
        raise self._contended(key)

    @dual
    async def keys(self, prefix: str = "") -> list[str]:
        """The keys that have a value, sorted; only those starting with ``prefix``."""
        found = await shared_kv.keys(await self.connection(), self.bucket, self._key_pattern())
        keys = (decode_key(k.rsplit(".", 1)[1]) for k in found)
        return sorted(k for k in keys if k.startswith(prefix))

    @dual
    async def watch(self, prefix: str = "") -> Watch:
        """Changes to keys starting with ``prefix`` from now on: iterate it (``for`` or
        ``async for``); ``close()`` it, or use it as a context manager, to stop."""
        changes = Watch(self, prefix)
        changes.sub = await shared_kv.watch(
            await self.connection(), self.bucket, self._key_pattern(), changes.deliver
        )
        return changes

    def _key_pattern(self) -> str:
        return protocol.dict_key(self.scope, self.name, ">")

    def _contended(self, key: str) -> LatticeError:
        return LatticeError(
            f"{self._where(key)}: {MAX_CAS_ATTEMPTS} writes in a row lost to others; "
            "too many writers on one key"
        )


_END = object()


class Watch:
    """An iterator of a Dict's changes (``Change``), sync or async."""

    def __init__(self, owner: Dict, prefix: str) -> None:
        self._owner = owner
        self._prefix = prefix
        self.sub: Subscription | None = None
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def deliver(self, entry: shared_kv.Entry) -> None:
        """On the client's loop: queue the change, wake an async reader."""
        self._items.put(entry)
        with self._lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, future = waiter
            loop.call_soon_threadsafe(_wake, future)

    def _change(self, item: Any) -> Change | None:
        """The change an entry is, or None when its key is outside the prefix."""
        entry: shared_kv.Entry = item
        key = decode_key(entry.key.rsplit(".", 1)[1])
        if not key.startswith(self._prefix):
            return None
        value = None if entry.value is None else decode(entry.value)
        return Change(key, value, entry.op, entry.revision)

    def __iter__(self) -> Iterator[Change]:
        return self

    def __next__(self) -> Change:
        change = self._next(None)
        if change is None:
            raise StopIteration
        return change

    def next(self, timeout: float | None = None) -> Change | None:
        """The next change, or None after ``timeout`` seconds with none (or once closed)."""
        return self._next(check_timeout(timeout, f"watch of {self._owner.label}"))

    def _next(self, timeout: float | None) -> Change | None:
        while True:
            try:
                item = self._items.get(timeout=timeout)
            except queue.Empty:
                return None
            if item is _END:
                self._items.put(_END)  # for the next reader too
                return None
            change = self._change(item)
            if change is not None:
                return change

    def __aiter__(self) -> AsyncIterator[Change]:
        return self

    async def __anext__(self) -> Change:
        while True:
            try:
                item = self._items.get_nowait()
            except queue.Empty:
                await self._wait()
                continue
            if item is _END:
                self._items.put(_END)
                raise StopAsyncIteration
            change = self._change(item)
            if change is not None:
                return change

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiter = (loop, future)
        if not self._items.empty():  # came between the check and the registration
            return
        await future

    def close(self) -> None:
        """Stop watching (the server drops the watch's consumer soon after)."""
        sub, self.sub = self.sub, None
        if sub is not None:
            self._owner.client().loop.call_soon_threadsafe(_unsubscribe, sub)
        self.deliver_end()

    def deliver_end(self) -> None:
        self._items.put(_END)
        with self._lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter[0].call_soon_threadsafe(_wake, waiter[1])

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_closing: set[asyncio.Task[None]] = set()
"""Unsubscribes under way (a task nobody holds may be collected before it runs)."""


def _unsubscribe(sub: Subscription) -> None:
    task = asyncio.ensure_future(sub.unsubscribe())
    _closing.add(task)
    task.add_done_callback(_closing.discard)
