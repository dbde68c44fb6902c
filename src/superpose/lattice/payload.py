"""Arguments and results on the wire: codecs, and spilling big ones to the object store."""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import uuid
from typing import Any

import cloudpickle
from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.config import SPILL_THRESHOLD_BYTES
from superpose.errors import exception_parts
from superpose.lattice import objects, offers

BY_VALUE_MODULES: set[bytes] = {b"__main__"}
"""Modules the receiving side cannot import: values referring to them are sent by value.

A client's ``__main__`` script is imported under another name on nodes; an
executor adds its bundle's modules (the caller of a deployed app lacks them).
"""

LOCAL_NAMES: dict[str, str] = {}
"""Module name on nodes → name here, for modules nodes import under another name (a
caller's ``__main__`` script runs there as its file's stem)."""
MAX_EXCEPTION_BYTES = 256 * 1024
"""A raised exception bigger than this pickled reaches the caller as a ``RemoteError``."""


def _pickle(value: Any) -> bytes:
    """The C pickler when the value refers to nothing the receiver lacks; else cloudpickle.

    By-reference pickles name every module they refer to, so a scan for those
    names is exact; it makes plain values about 10× cheaper to encode.
    """
    try:
        data = pickle.dumps(value, protocol=5)
    except (pickle.PicklingError, AttributeError, TypeError):
        return bytes(cloudpickle.dumps(value, protocol=5))
    if any(name in data for name in BY_VALUE_MODULES):
        return bytes(cloudpickle.dumps(value, protocol=5))
    return data


def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any], codec: str) -> bytes:
    if codec == protocol.CODEC_JSON:
        return json.dumps({"args": list(args), "kwargs": kwargs}).encode()
    return _pickle((args, kwargs))


def decode_args(data: bytes | bytearray, codec: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if codec == protocol.CODEC_JSON:
        body = json.loads(data)
        return tuple(body.get("args", ())), dict(body.get("kwargs", {}))
    args, kwargs = cloudpickle.loads(data)
    return tuple(args), dict(kwargs)


def encode_exception(exc: BaseException) -> bytes:
    """A raised exception as its class's name and its state, so the caller can raise the
    same class (b"" when it cannot travel: the caller then gets a plain RemoteError).
    The class goes by name, never by value: a class rebuilt from its code would be
    another class, and ``except`` at the caller would not match it."""
    cls, args, state = exception_parts(exc)
    if not issubclass(cls, Exception):  # KeyboardInterrupt, SystemExit: not the caller's
        return b""
    try:
        data = _pickle((cls.__module__, cls.__qualname__, args, state))
    except Exception:
        return b""
    return data if len(data) <= MAX_EXCEPTION_BYTES else b""


def decode_exception(
    data: bytes,
) -> tuple[type[Exception], tuple[Any, ...], dict[str, Any]] | None:
    """The class, args and attributes of a raised exception, or None when its class is
    not here. Only modules already imported here (or the standard library's) are looked
    in: code that catches a class has imported it, and rebuilding an error must not run
    the import of a module the caller never loaded."""
    try:
        module, qualname, args, state = cloudpickle.loads(data)
        cls = _loaded_class(LOCAL_NAMES.get(module, module), qualname)
    except Exception:
        return None
    if cls is None or not isinstance(args, tuple) or not isinstance(state, dict):
        return None
    return cls, args, state


def _loaded_class(module_name: str, qualname: str) -> type[Exception] | None:
    module = sys.modules.get(module_name)
    if module is None and module_name.partition(".")[0] in sys.stdlib_module_names:
        module = importlib.import_module(module_name)
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found if isinstance(found, type) and issubclass(found, Exception) else None


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"a value of type {type(value).__name__} is not JSON-serializable")


def encode_value(value: Any, codec: str) -> bytes:
    if codec == protocol.CODEC_HTTP:  # already an encoded HttpResponse
        return bytes(value)
    if codec == protocol.CODEC_JSON:
        return json.dumps(value, default=_json_default).encode()
    return _pickle(value)


def decode_value(data: bytes | bytearray, codec: str) -> Any:
    if codec == protocol.CODEC_HTTP:  # the gateway decodes the HttpResponse itself
        return data
    if codec == protocol.CODEC_JSON:
        return json.loads(data)
    return cloudpickle.loads(data)


async def wrap(nc: NATS, data: bytes, codec: str) -> protocol.Payload:
    """Durable payloads: inline if small, else spilled to the blob store (they must
    outlive every process) and passed by reference."""
    if len(data) <= SPILL_THRESHOLD_BYTES:
        return protocol.Payload(codec=codec, data=data, size=len(data))
    blob = uuid.uuid4().hex
    await objects.put(nc, protocol.BLOBS_BUCKET, protocol.blob_object_name(blob), data)
    return protocol.Payload(codec=codec, blob=blob, size=len(data))


def offer(offered: offers.Offers, data: bytes, codec: str, hold_s: float) -> protocol.Payload:
    """Direct calls' payloads: inline if small, else offered for the reader to pull
    (its caller is waiting, so nothing needs to survive it)."""
    if len(data) <= SPILL_THRESHOLD_BYTES:
        return protocol.Payload(codec=codec, data=data, size=len(data))
    return offered.offer(data, codec, hold_s)


async def unwrap(nc: NATS, payload: protocol.Payload) -> bytes | bytearray:
    if payload.blob is None:
        return payload.data or b""
    if payload.source is not None:
        return await offers.pull(nc, payload)
    return await objects.get(nc, protocol.BLOBS_BUCKET, protocol.blob_object_name(payload.blob))


async def discard(nc: NATS, payload: protocol.Payload | None) -> None:
    """Free a spilled or offered blob once its reader has it (the bucket TTL, or the
    offer's expiry, is the backstop)."""
    if payload is None or payload.blob is None:
        return
    if payload.source is not None:
        await offers.release(nc, payload)
    else:
        await objects.delete(nc, protocol.BLOBS_BUCKET, protocol.blob_object_name(payload.blob))
