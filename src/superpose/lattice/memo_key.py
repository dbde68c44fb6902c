"""The key of a cached call: a hash of what decides its result, and nothing else.

Arguments are hashed by a canonical encoding, not by their pickle: a pickle of
equal values may differ (a dict's insertion order, a set's iteration order, memo
references), and a cache keyed on it would miss where it should hit. Plain data is
encoded here by type and value (ints, floats, strs, bytes, None, bools, tuples,
lists, dicts and sets, sorted where Python leaves the order free). Other types may
register a digest of their own (``register_digest``): a ``sp.Ref`` hashes by its
content digest, not by its bytes. Anything else is ``Uncanonical``, and the call
runs uncached.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from superpose import protocol
from superpose.lattice.inputs import Input
from superpose.lattice.refs import Ref

KEY_VERSION = protocol.MEMO_KEY_VERSION.encode()
FUTURE_TAG = "Future"
"""How a cached call's Future (``client/memo.py``) and its ``Input`` on the node are tagged."""
MAX_DEPTH = 64
"""Nesting deeper than this (or a container that holds itself) is not hashed."""

Digester = Callable[[Any], bytes]
_DIGESTERS: dict[type, tuple[str, Digester]] = {}


class Uncanonical(Exception):
    """An argument that has no canonical encoding; the message names its type."""


def register_digest(kind: type, digester: Digester, tag: str | None = None) -> None:
    """Hash values of ``kind`` by ``digester(value)`` (e.g. a Ref by its content digest),
    tagged with ``tag`` (default: the type's name; two types one tag hash alike)."""
    _DIGESTERS[kind] = (tag or kind.__qualname__, digester)


def _ref_digest(ref: Ref) -> bytes:
    """A Ref by its content digest: the same value put twice is one key, never its bytes."""
    return ref.digest.encode()


register_digest(Ref, _ref_digest)


def _input_digest(found: Input) -> bytes:
    """On the node, a cached call's input future arrives as an ``Input`` naming its key:
    hashed as the caller hashed the Future (``client/memo.py``), so the executor finds
    the key the caller asked for. Another input's value was not known when it was keyed."""
    if found.memo_key is None:
        raise Uncanonical("an input of an uncached call (its value was not known when keyed)")
    return found.memo_key.encode()


register_digest(Input, _input_digest, tag=FUTURE_TAG)


def call_key(
    app: str,
    fn: str,
    digest: str,
    env: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> str:
    """``protocol.memo_key`` of a call: version, environment, function and arguments.
    Raises ``Uncanonical`` for an argument it cannot hash."""
    h = hashlib.sha256(KEY_VERSION)
    for part in (app, fn, digest, env):
        _text(h, part)
    _encode(h, tuple(args), 0)
    _encode(h, dict(kwargs), 0)
    return protocol.memo_key(app, fn, h.hexdigest())


def _text(h: Any, text: str) -> None:
    data = text.encode()
    h.update(struct.pack(">Q", len(data)))
    h.update(data)


def _encode(h: Any, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Uncanonical(f"arguments nested over {MAX_DEPTH} deep")
    kind = type(value)
    plain = _PLAIN.get(kind)
    if plain is not None:
        plain(h, value, depth)
    elif kind in _DIGESTERS:
        tag, digester = _DIGESTERS[kind]
        h.update(b"r")
        _text(h, tag)
        h.update(digester(value))
    else:
        raise Uncanonical(f"cannot hash a {kind.__module__}.{kind.__qualname__} canonically")


def _none(h: Any, value: None, depth: int) -> None:
    h.update(b"N")


def _bool(h: Any, value: bool, depth: int) -> None:
    h.update(b"T" if value else b"F")


def _int(h: Any, value: int, depth: int) -> None:
    h.update(b"i")
    _text(h, str(value))


def _float(h: Any, value: float, depth: int) -> None:
    h.update(b"f")
    _text(h, float.hex(value))


def _str(h: Any, value: str, depth: int) -> None:
    h.update(b"s")
    _text(h, value)


def _bytes(h: Any, value: bytes | bytearray, depth: int) -> None:
    h.update(b"b" + struct.pack(">Q", len(value)))
    h.update(value)


def _sequence(tag: bytes) -> Callable[[Any, Any, int], None]:
    def encode(h: Any, value: Sequence[Any], depth: int) -> None:
        h.update(tag + struct.pack(">Q", len(value)))
        for item in value:
            _encode(h, item, depth + 1)

    return encode


def _dict(h: Any, value: dict[Any, Any], depth: int) -> None:
    _unordered(h, b"d", [_digest(k, depth) + _digest(v, depth) for k, v in value.items()])


def _set(h: Any, value: set[Any] | frozenset[Any], depth: int) -> None:
    _unordered(h, b"e", [_digest(item, depth) for item in value])


_PLAIN: dict[type, Callable[[Any, Any, int], None]] = {
    type(None): _none,
    bool: _bool,
    int: _int,
    float: _float,
    str: _str,
    bytes: _bytes,
    bytearray: _bytes,
    tuple: _sequence(b"t"),
    list: _sequence(b"l"),
    dict: _dict,
    set: _set,
    frozenset: _set,
}
"""Exact types only: a subclass (an IntEnum, a namedtuple, an OrderedDict) may carry
meaning its base's encoding would lose, so it is not plain data here."""


def _unordered(h: Any, tag: bytes, digests: list[bytes]) -> None:
    """A dict's or set's items in the order of their digests: the same for equal values."""
    h.update(tag + struct.pack(">Q", len(digests)))
    for item in sorted(digests):
        h.update(item)


def _digest(value: Any, depth: int) -> bytes:
    h = hashlib.sha256()
    _encode(h, value, depth + 1)
    return h.digest()
