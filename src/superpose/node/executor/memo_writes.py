"""The executor's half of the cache: a cached call's result, stored under its key.

A cached call arrives with the key its caller looked up (``Invocation.memo``). The
caller may not write results (``security/roles.py``); the executor does, and only
under a key it has checked is the hash of what it runs: its app, function, bundle and
environment, and the arguments as they arrived, before Refs and inputs become values
(``lattice/memo_key.call_key``). So a caller that sends one call with another call's
key stores nothing, and a result in the cache is the answer of the code and arguments
its key names. Three kinds of argument need more than their hash:

- a Ref is hashed by its digest, so its bytes must hash to that digest;
- a cached call's result given as an input is hashed by that call's key, so its
  value is read from the cache by that key (the app's own: an executor may read no
  other app's), not taken from the caller's pointer;
- anything else that cannot be hashed (an uncached call's input) makes the key
  unverifiable.

When the key cannot be checked the call runs as asked and its result is not stored
(said in the node's log); it never fails for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from superpose import protocol
from superpose.lattice import payload
from superpose.lattice.inputs import Input
from superpose.lattice.memo_key import Uncanonical, call_key
from superpose.lattice.memo_store import MemoStore
from superpose.lattice.ref_args import RefCache
from superpose.lattice.refs import Ref, digest_of

log = logging.getLogger("superpose.memo")


def checked_ask(
    inv: protocol.Invocation, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> protocol.MemoAsk | None:
    """``inv``'s key if it is the hash of what ``inv`` runs with these arguments (Refs
    and inputs not yet swapped for their values), else None: nothing will be stored."""
    ask = inv.memo
    if ask is None:
        return None
    try:
        key = call_key(inv.app, inv.fn, inv.digest, inv.env, args, kwargs)
    except Uncanonical as exc:
        log.info("%s.%s: result not cached (%s)", inv.app, inv.fn, exc)
        return None
    if key != ask.key:
        log.warning(
            "%s.%s: result not cached: invocation %s asked for key %s, which is not the "
            "hash of what it runs",
            inv.app,
            inv.fn,
            inv.id,
            ask.key,
        )
        return None
    return ask


async def cached_inputs(
    store: MemoStore, inv: protocol.Invocation, found: list[Input]
) -> dict[int, Any] | None:
    """The values of the cached inputs among ``found`` (by the Input's ``id``), read
    from the cache by their keys; None when one cannot be (another app's, gone since):
    the call then reads its inputs as sent and its result is not stored."""
    keyed = {id(i): i.memo_key for i in found if i.memo_key is not None}
    if any(not key.startswith(f"{inv.app}.") for key in keyed.values()):
        return None
    looks = await asyncio.gather(*(store.look(key) for key in keyed.values()))
    values: dict[int, Any] = {}
    for at, found_entry in zip(keyed, looks, strict=True):
        entry = found_entry.entry
        if entry is None:
            log.info("%s.%s: an input's cache entry is gone: result not cached", inv.app, inv.fn)
            return None
        try:
            data = await store.value(entry)
        except Exception as exc:  # too big for its entry, and gone from beside it
            log.info(
                "%s.%s: an input's cached value is gone (%s): not cached", inv.app, inv.fn, exc
            )
            return None
        values[at] = payload.decode_value(data, entry.codec)
    return values


async def refs_sound(cache: RefCache, refs: list[Ref]) -> bool:
    """Whether each Ref's bytes hash to its digest (a Ref forged to name other bytes
    would store its result under the key of the genuine one's)."""
    for ref in {ref.digest: ref for ref in refs}.values():
        data = await cache.bytes_of(ref)
        if digest_of(data) != ref.digest:
            log.warning("%s: its bytes do not hash to its digest: result not cached", ref.name())
            return False
    return True


async def store(
    memo: MemoStore,
    inv: protocol.Invocation,
    ask: protocol.MemoAsk,
    data: payload.Encoded,
    node_id: str,
) -> None:
    """The result under its checked key, before its caller hears of it (so a dependent
    sent on that news finds it). A failure to store is logged, never the call's."""
    now = time.time()
    entry = protocol.MemoEntry(
        running=False,
        until=now + min(max(ask.ttl_s, 0.0), protocol.MEMO_MAX_AGE_S),
        created=now,
        runner=node_id,
        codec=inv.args.codec,
    )
    try:
        joined = bytes(data)  # a big result's frames joined once (the join is kept)
        if len(joined) > protocol.MEMO_MAX_VALUE_BYTES:  # too big for its entry: beside it
            entry.stored, entry.size = digest_of(joined), len(joined)
            await memo.store_value(entry.stored, joined)
        else:
            entry.value = joined
        await memo.store(ask.key, entry)
    except Exception as exc:
        log.warning("%s.%s: result not cached: %s", inv.app, inv.fn, exc)
