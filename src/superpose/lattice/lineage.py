"""Lineage: an ephemeral object whose holder died is made again by running its producer.

An object put inside a function is held by that function's executor; when the
executor or its node dies, the bytes are gone. What made them is not: the put
records its producer's invocation (``record``), and a reader that finds the object
lost (``refs.fetch``) runs that invocation again, if its function was declared
``idempotent``, and reads the object the re-run returns (``remake``). A producer that
is not idempotent is never run twice behind the user's back: the reader gets
``ObjectLostError`` naming the object, the node that held it and the producer.

Everything lives in the memory KV ``sp_lineage`` under a hash of the Ref's offer id,
sealed with a key derived from that id (as ``sealed.py`` seals spilled payloads): the
offer id travels only inside the Ref, so whoever may read the object may remake it,
and whoever lists the bucket by a wildcard key learns neither the arguments nor the
Refs. Three keys per object: ``rec`` (the record), ``claim`` (a create-only write: the
one reader that won it runs the producer again, so concurrent readers remake it
once) and ``done`` (the Ref made again, or why that failed), which the other readers
wait for, for a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import pickle
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import nats.errors
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from superpose import config, protocol
from superpose.errors import LatticeError, ObjectLostError
from superpose.lattice import payload, refs
from superpose.lattice.refs import Ref

log = logging.getLogger("superpose.lineage")

Rerun = Callable[[protocol.Invocation, protocol.Buffer], Awaitable[Any]]
"""Runs an invocation again with these argument bytes (a new id, the same function,
version and arguments) and returns its decoded result: the client's, handed in so
this layer makes no calls."""

NAME_LABEL = b"superpose lineage name\0"
KEY_LABEL = b"superpose lineage key\0"
NONCE_BYTES = 12
"""A random nonce before each sealed value: one key may seal several (a failed remake's
error, then a later remake's Ref)."""
WAIT_MARGIN_S = 30.0
"""A waiting reader allows the re-run its timeout plus this (placement, a cold start)."""
POLL_FIRST_S = 0.02
POLL_MAX_S = 0.5
"""A waiting reader looks for the outcome at doubling intervals up to this: a watch
would need a consumer, which narrow roles may not make on a bucket they cannot list."""

_buckets: weakref.WeakKeyDictionary[NATS, KeyValue] = weakref.WeakKeyDictionary()
_remade: weakref.WeakKeyDictionary[Ref, Ref] = weakref.WeakKeyDictionary()
"""A lost Ref alive in this process → the Ref made again: read again without asking,
and kept alive (its new holder's lease renewed) as long as the lost one is."""
_warned: set[tuple[str, str]] = set()
"""(what, function) already warned about: a record not written, a different object
made again (each once per function)."""


def bucket_config(replicas: int) -> KeyValueConfig:
    """``sp_lineage``, made by ``ensure_assets`` with the others."""
    return KeyValueConfig(
        bucket=protocol.LINEAGE_BUCKET,
        history=1,
        ttl=protocol.LINEAGE_TTL_S,
        storage=StorageType.MEMORY,
        replicas=replicas,
        direct=True,  # read by key, so a role's permission can name it
    )


async def _bucket(nc: NATS) -> KeyValue:
    kv = _buckets.get(nc)
    if kv is None:
        try:
            kv = _buckets[nc] = await nc.jetstream().key_value(protocol.LINEAGE_BUCKET)
        except NotFoundError:
            raise LatticeError(
                f"the lattice has no {protocol.LINEAGE_BUCKET} bucket: its nodes predate "
                "lineage (restart them with this version of superpose)"
            ) from None
    return kv


def name_of(blob: str) -> str:
    """The key an object's lineage is kept under: a hash of its offer id, not the id."""
    return hashlib.sha256(NAME_LABEL + blob.encode()).hexdigest()


def _key(kind: str, blob: str) -> str:
    return protocol.lineage_key(kind, name_of(blob))


def _cipher(kind: str, blob: str) -> AESGCM:
    return AESGCM(hashlib.sha256(KEY_LABEL + f"{kind}\0{blob}".encode()).digest())


def seal(kind: str, blob: str, data: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _cipher(kind, blob).encrypt(nonce, data, None)


def unseal(kind: str, blob: str, sealed: bytes) -> bytes | None:
    """The value, or None when it does not open with this id (altered, or garbage)."""
    nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
    try:
        return _cipher(kind, blob).decrypt(nonce, body, None)
    except (InvalidTag, ValueError):
        return None


async def record(nc: NATS, ref: Ref, lineage: protocol.LineageRecord) -> bool:
    """Note what made ``ref``'s object, for a reader who finds it lost. A record that
    cannot be written (refused, no answer) does not fail the put: the object then has
    no lineage, which is logged once per function, and a reader of it once lost is
    told so. Whether it was written."""
    if ref.blob is None:
        return False
    data = msgspec.msgpack.encode(lineage)
    try:
        await (await _bucket(nc)).put(_key("rec", ref.blob), seal("rec", ref.blob, data))
    except (nats.errors.Error, LatticeError) as exc:
        if ("record", lineage.function) not in _warned:
            _warned.add(("record", lineage.function))
            log.warning(
                "objects %s puts have no lineage (%s could not be written: %s): one lost "
                "with its holder cannot be made again",
                lineage.function,
                protocol.LINEAGE_BUCKET,
                str(exc) or type(exc).__name__,
            )
        return False
    return True


async def _read(kv: KeyValue, kind: str, blob: str) -> bytes | None:
    try:
        entry = await kv.get(_key(kind, blob))
    except KeyNotFoundError:
        return None
    return unseal(kind, blob, entry.value) if entry.value else None


async def remake(nc: NATS, ref: Ref, lost: ObjectLostError, rerun: Rerun) -> bytes | bytearray:
    """The bytes of ``ref``'s lost object, made again by its producer when that may run
    twice; ``ObjectLostError`` saying why not otherwise. Bounded: never hangs."""
    if ref.blob is None:  # refs.fetch hands over only offered objects
        raise lost
    again = _remade.get(ref)
    if again is not None:
        try:
            return await refs.fetch_held(nc, again)
        except ObjectLostError:
            _remade.pop(ref, None)
            raise ObjectLostError(f"{lost.message}; the object made again was lost too") from None
    try:
        kv = await _bucket(nc)
        lineage = await _lineage(kv, ref.blob, lost)
        again = await _once(nc, kv, ref, lineage, rerun, lost)
    except (nats.errors.Error, LatticeError) as exc:  # refused, or no answer in time
        why = str(exc) or type(exc).__name__
        raise ObjectLostError(
            f"{lost.message}; its lineage in {protocol.LINEAGE_BUCKET} could not be used: {why}"
        ) from exc
    _remade[ref] = again
    return await refs.fetch_held(nc, again)


async def _lineage(kv: KeyValue, blob: str, lost: ObjectLostError) -> protocol.LineageRecord:
    data = await _read(kv, "rec", blob)
    if data is None:
        raise ObjectLostError(
            f"{lost.message}; it cannot be made again: no lineage is recorded for it (it "
            "was put outside a function, or its record expired)"
        )
    lineage = msgspec.msgpack.decode(data, type=protocol.LineageRecord)
    if not lineage.idempotent:
        raise ObjectLostError(
            f"{lost.message}; its producer {lineage.function} is not idempotent, so it is "
            "not run again to make it: declare it @sp.function(idempotent=True) if running "
            "it twice is safe"
        )
    return lineage


async def _once(
    nc: NATS,
    kv: KeyValue,
    ref: Ref,
    lineage: protocol.LineageRecord,
    rerun: Rerun,
    lost: ObjectLostError,
) -> Ref:
    """The object made again, by this reader if it wins the claim, else by the one that
    did (waited for up to the producer's timeout plus a margin)."""
    blob = ref.blob or ""
    invocation = protocol.Invocation.decode(lineage.invocation)
    wait_s = (invocation.timeout_s or config.DEFAULT_TIMEOUT_S) + WAIT_MARGIN_S
    earlier = await _read(kv, "done", blob)
    if earlier is not None and "ref" in msgspec.msgpack.decode(earlier):
        return _outcome_ref(earlier, lineage, lost)  # made again already
    revision = await _claim(kv, blob, wait_s)
    if revision is None:
        return await _outcome(kv, blob, lineage, wait_s, lost)
    if earlier is not None:  # an earlier remake failed: its error goes, this one tries
        await kv.delete(_key("done", blob))
    log.info("remaking %s: running %s again", ref.name(), lineage.function)
    try:
        raw = await payload.unwrap(nc, invocation.args)
        value = await asyncio.wait_for(rerun(invocation, raw), wait_s)
        again = pick(ref, value, lineage.function)
    except Exception as exc:
        why = str(exc) or type(exc).__name__
        await _settle(kv, blob, {"error": why})  # for the readers waiting on this round
        with contextlib.suppress(KeyWrongLastSequenceError):  # a later reader may try again
            await kv.delete(_key("claim", blob), last=revision)
        raise ObjectLostError(
            f"{lost.message}; running its producer {lineage.function} again failed: {why}"
        ) from exc
    await _settle(kv, blob, {"ref": pickle.dumps(again)})
    return again


async def _claim(kv: KeyValue, blob: str, wait_s: float) -> int | None:
    """Claim the remake (its revision), or None when another reader holds the claim.
    A claim names when it ends; one past that (its reader died) is taken over."""
    key, until = _key("claim", blob), f"{time.time() + wait_s:.3f}".encode()
    try:
        return int(await kv.create(key, until))
    except KeyWrongLastSequenceError:
        pass
    try:
        held = await kv.get(key)
    except KeyNotFoundError:  # released meanwhile: wait for the round under way
        return None
    try:
        ends = float(held.value or b"0")
    except ValueError:
        ends = 0.0
    if ends > time.time():
        return None
    try:
        return int(await kv.update(key, until, last=held.revision))
    except KeyWrongLastSequenceError:  # another reader took it over first
        return None


async def _settle(kv: KeyValue, blob: str, outcome: dict[str, Any]) -> None:
    await kv.put(_key("done", blob), seal("done", blob, msgspec.msgpack.encode(outcome)))


async def _outcome(
    kv: KeyValue, blob: str, lineage: protocol.LineageRecord, wait_s: float, lost: ObjectLostError
) -> Ref:
    """The Ref another reader made again, once it has said so."""
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + wait_s, POLL_FIRST_S
    while (data := await _read(kv, "done", blob)) is None:
        if loop.time() >= deadline:
            raise ObjectLostError(
                f"{lost.message}; another reader began running its producer "
                f"{lineage.function} again and has not finished in {wait_s:.0f} s (it may "
                "have died): try again later"
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, POLL_MAX_S)
    return _outcome_ref(data, lineage, lost)


def _outcome_ref(data: bytes, lineage: protocol.LineageRecord, lost: ObjectLostError) -> Ref:
    """The Ref a ``done`` value holds, or ``ObjectLostError`` with the error it holds."""
    outcome = msgspec.msgpack.decode(data)
    if "ref" not in outcome:
        raise ObjectLostError(
            f"{lost.message}; running its producer {lineage.function} again failed: "
            f"{outcome.get('error', 'no reason given')}"
        )
    again: Ref = pickle.loads(outcome["ref"])  # sealed with the offer id: ours to trust
    return again


def pick(lost: Ref, value: Any, function: str) -> Ref:
    """The Ref in a re-run's result that stands for the lost one: the one with its
    digest; else, when the result holds exactly one Ref, that one (the function is not
    deterministic: warned once); else ``ObjectLostError``."""
    found = list(refs_in(value))
    for ref in found:
        if ref.digest == lost.digest:
            return ref
    if len(found) == 1:
        if ("differs", function) not in _warned:
            _warned.add(("differs", function))
            log.warning(
                "%s made a different object when run again to remake %s (digest %s): "
                "using the new one; a function whose results differ between runs gives "
                "readers of a lost object a different value",
                function,
                lost.name(),
                found[0].digest[:12],
            )
        return found[0]
    raise ObjectLostError(
        f"{lost.name()} is gone, and running its producer {function} again returned "
        f"{len(found)} objects, none with its digest: cannot tell which stands for it"
    )


def refs_in(value: Any) -> Iterator[Ref]:
    """The Refs in ``value``, in lists, tuples and dicts at any depth."""
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from refs_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from refs_in(item)
