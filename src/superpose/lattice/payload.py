"""Arguments and results on the wire: codecs, and spilling big ones to the object store."""

from __future__ import annotations

import importlib
import io
import itertools
import json
import pickle
import sys
import uuid
from typing import Any

import cloudpickle
from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.config import SPILL_THRESHOLD_BYTES
from superpose.errors import SerializationError, exception_parts
from superpose.lattice import objects, offers, sealed, strict_json

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
        return _cloudpickle(value)
    if any(name in data for name in BY_VALUE_MODULES):
        return _cloudpickle(value)
    return data


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, refusing open files: it would send a text file's contents, and the
    function would get something that is not a file, with no error to say so."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, io.IOBase) and not isinstance(obj, io.BytesIO | io.StringIO):
            raise pickle.PicklingError(OPEN_FILE)
        return super().reducer_override(obj)


OPEN_FILE = "an open file cannot be sent; send its contents or its path"


def _cloudpickle(value: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=5).dump(value)
    return buffer.getvalue()


def cannot_send(what: str, value: Any, codec: str, error: BaseException) -> SerializationError:
    """The error for a value that could not be encoded: what it was (``argument 'lock'
    of shop.pay``, ``the result of shop.pay``), and the part of it at fault, by type.
    Only on failure: it encodes the value's parts again to find that part."""
    part = unsendable_part(value, codec)
    if part is None:  # each part alone can be sent: say what the encoder said
        return SerializationError(f"{what}: cannot be sent ({_reason(error)})")
    try:
        _encode(part, codec)
    except Exception as exc:
        error = exc
    where = "" if part is value else " in it"
    return SerializationError(f"{what}: cannot send a {type_name(part)}{where} ({_reason(error)})")


def unsendable_part(value: Any, codec: str, depth: int = 0) -> Any:
    """The innermost part of ``value`` that cannot be encoded, looking a few levels into
    lists, tuples, sets and dicts; None if ``value`` can be."""
    try:
        _encode(value, codec)
        return None
    except Exception:
        pass
    if depth < MAX_SEARCH_DEPTH:
        children: Any = ()
        if isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, list | tuple | set | frozenset):
            children = value
        for child in itertools.islice(children, MAX_SEARCH_ITEMS):
            found = unsendable_part(child, codec, depth + 1)
            if found is not None:
                return found
    return value


MAX_SEARCH_DEPTH = 3
MAX_SEARCH_ITEMS = 1000
"""How far ``cannot_send`` looks into containers for the part at fault."""


def _encode(value: Any, codec: str) -> None:
    if codec == protocol.CODEC_JSON:
        strict_json.dumps(value, default=_json_default)
    else:
        _pickle(value)


def _reason(error: BaseException) -> str:
    text = str(error)
    return text if text == OPEN_FILE else f"{type(error).__name__}: {text}"


def type_name(value: Any) -> str:
    """A value's type as a message names it: ``_thread.lock``, ``list``."""
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


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
    try:  # a user's ``__reduce__`` or attribute may raise: the report must still go
        cls, args, state = exception_parts(exc)
        if not issubclass(cls, Exception):  # KeyboardInterrupt, SystemExit: not the caller's
            return b""
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
    if codec == protocol.CODEC_JSON:  # strict: a NaN result is the function's error
        return strict_json.dumps(value, default=_json_default)
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
    blob = uuid.uuid4().hex  # the capability: the object is sealed with it (lattice/sealed.py)
    await objects.put(nc, protocol.BLOBS_BUCKET, sealed.object_name(blob), sealed.seal(blob, data))
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
    stored = await objects.get(nc, protocol.BLOBS_BUCKET, sealed.object_name(payload.blob))
    return sealed.unseal(payload.blob, stored)


async def discard(nc: NATS, payload: protocol.Payload | None) -> None:
    """Free a spilled or offered blob once its reader has it (the bucket TTL, or the
    offer's expiry, is the backstop)."""
    if payload is None or payload.blob is None:
        return
    if payload.source is not None:
        await offers.release(nc, payload)
    else:
        await objects.delete(nc, protocol.BLOBS_BUCKET, sealed.object_name(payload.blob))
