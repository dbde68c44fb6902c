"""Fuzzing the decoders: any bytes either decode or raise ``ProtocolError``.

Anyone on the lattice can publish anything on any subject, and a stored message
can be damaged, so a decoder that let a TypeError, KeyError, msgspec or msgpack
error escape would take down the reader that trusted its one ``except``. For
every wire message type, every agent ↔ executor frame type and every registry
record, ``COUNT`` valid
encodings are mutated, half at the byte
level (bit flips, truncation, insertion, extension) and half at the structure
level (decoded to builtins, a field replaced by a random value of a random type,
keys dropped or added, the tag changed, then re-encoded), and fed to the decoder.

Seeded and deterministic: a failure names its seed, and ``SP_FUZZ_SEED=<seed>``
replays it (``SP_FUZZ_COUNT`` changes how many messages each type gets).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

import msgspec
import pytest

import wire_samples
from superpose import protocol

SEED = int(os.environ.get("SP_FUZZ_SEED", "20250611"))
COUNT = int(os.environ.get("SP_FUZZ_COUNT", "100000"))

_INTERESTING_BYTES = (
    b"\xc0",  # nil
    b"\xc1",  # never used
    b"\xc3",  # true
    b"\xdd\xff\xff\xff\xff",  # an array of 2**32-1 elements
    b"\xdf\xff\xff\xff\xff",  # a map of 2**32-1 pairs
    b"\xdb\xff\xff\xff\xff",  # a str of 4 GiB
    b"\xc6\x7f\xff\xff\xff",  # a bin of 2 GiB
    b"\xd6\xff\x00\x00\x00\x00",  # a timestamp
    b"\xd4\x01\x00",  # an ext of another type
    b"\x91" * 64,  # arrays in arrays
    b"\x81\xa1t",  # a map starting with the tag key
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # NaN
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # 2**64-1
)


_WORDS = (
    b"",
    b"release",
    b"0",
    b"-1",
    b"+1",
    b"1.5",
    b"\xd9\xa3",  # an Arabic-Indic digit three: isdigit(), but int() refuses it
    b"\xc2\xb2",  # a superscript two: the same
    b"9" * 30,
    b"9" * 5000,  # more digits than int() converts
    b"\xff\xfe",
    b"x y",
)


@dataclass(frozen=True)
class Case:
    """One decoder and valid encodings of what it reads."""

    name: str
    decode: Callable[[bytes], Any]
    samples: tuple[bytes, ...]
    reencode: Callable[[Any], object]
    """Run on whatever decodes: it must encode again (a decoded value is well typed)."""
    tags: tuple[str, ...] = ()
    """Values the structure mutator puts in the tag field."""
    tag_field: str = "t"
    text: bool = False
    """A line of words, not msgpack: the structure mutator works on its words."""
    json: bool = False
    """JSON, not msgpack (the registry's records)."""


def _message_cases() -> list[Case]:
    samples: dict[type[protocol.Message], list[bytes]] = {}
    for message in wire_samples.messages().values():
        samples.setdefault(type(message), []).append(message.encode())
    tags = tuple(cls.TYPE for cls in protocol.MESSAGE_TYPES)
    cases = [
        Case(cls.__name__, cls.decode, tuple(samples[cls]), lambda m: m.encode(), tags)
        for cls in protocol.MESSAGE_TYPES
    ]
    notification = protocol.pack_results(wire_samples.notification())[0]
    cases.append(
        Case("DurableNotification", protocol.unpack_results, (notification,), protocol.pack_results)
    )
    return cases


def _frame_cases() -> list[Case]:
    """A case per frame type, fed to the decoder of its direction (which also reads
    the other frames of that direction: a changed ``op`` may make one of them)."""
    samples: dict[type[protocol.Frame], list[bytes]] = {}
    for frame in wire_samples.frames():
        samples.setdefault(type(frame), []).append(protocol.encode_frame(frame))
    cases = []
    for union, decode in (
        (protocol.FromAgent, protocol.decode_from_agent),
        (protocol.FromExecutor, protocol.decode_from_executor),
    ):
        types = get_args(union)
        ops = tuple(str(cls.__struct_config__.tag) for cls in types)
        for cls in types:
            name = f"{cls.__name__}Frame"
            encoded = tuple(samples[cls])
            cases.append(Case(name, decode, encoded, protocol.encode_frame, ops, tag_field="op"))
    return cases


def _text_cases() -> list[Case]:
    def encode(value: Any) -> object:
        return value.encode()

    pulls = (protocol.OfferPull("3f2a" * 8, 0, 1 << 20).encode(), b"b 1048576 1024")
    releases = (protocol.OfferRelease("3f2a" * 8).encode(),)
    done = (protocol.ForwardDone("node-7f3e", "3f9a1c0e5b7d2468.1a").encode(),)
    return [
        Case("OfferPull", protocol.decode_offer_request, pulls, encode, text=True),
        Case("OfferRelease", protocol.decode_offer_request, releases, encode, text=True),
        Case("ForwardDone", protocol.ForwardDone.decode, done, encode, text=True),
    ]


def _record_cases() -> list[Case]:
    """The registry bucket's JSON records."""
    version = protocol.Version(
        app="shop",
        digest="ab" * 32,
        created=1.5,
        size=10,
        files={"a.py": "cd" * 32},
        functions={"quote": {"module": "a", "qualname": "quote", "options": {"timeout_s": 2}}},
    )
    canaries = (
        protocol.Canary(version="ab" * 32, percent=10.0, key="arg:user").as_json(),
        protocol.Canary(version="cd" * 32, percent=50.0).as_json(),
    )
    links = protocol.encode_string_map({"pricing": "ab" * 32, "tax": "cd" * 32})
    manifest = protocol.BundleManifest(files={"a.py": "ab" * 32, "b/c.py": "cd" * 32}).as_json()

    def as_json(record: Any) -> object:
        return record.as_json()

    def string_map(data: bytes) -> dict[str, str]:
        return protocol.decode_string_map(data, "lock")

    return [
        Case("AppRecord", protocol.AppRecord.from_json, (b'{"created": 1.5}',), as_json, json=True),
        Case("Version", protocol.Version.from_json, (version.as_json(),), as_json, json=True),
        Case("Canary", protocol.Canary.from_json, canaries, as_json, json=True),
        Case("StringMap", string_map, (links,), protocol.encode_string_map, json=True),
        Case("BundleManifest", protocol.BundleManifest.from_json, (manifest,), as_json, json=True),
    ]


CASES = _message_cases() + _frame_cases() + _text_cases() + _record_cases()


# --- the mutator ------------------------------------------------------------------


class Mutator:
    """Makes broken variants of valid encodings with one seeded ``random.Random``."""

    def __init__(self, rng: random.Random, case: Case) -> None:
        self.rng = rng
        self.random = rng.random
        self.case = case
        if case.text:
            self.trees: list[Any] = [s.split(b" ") for s in case.samples]
        elif case.json:
            self.trees = [msgspec.json.decode(s) for s in case.samples]
        else:
            self.trees = [msgspec.msgpack.decode(s) for s in case.samples]
        self.paths = [list(_paths(tree)) for tree in self.trees]

    def __call__(self) -> bytes:
        rng = self.rng
        index = self.below(len(self.case.samples))
        if rng.random() < 0.5:
            return self.bytes_level(self.case.samples[index])
        if self.case.text:
            data = self.words_level(self.trees[index])
        else:
            data = self.structure_level(self.trees[index], self.paths[index])
        if rng.random() < 0.2:  # now and then both: a damaged copy of a damaged message
            data = self.bytes_level(data)
        return data

    def below(self, n: int) -> int:
        """``rng.randrange(n)``, five times faster (randrange dominated the run time)."""
        return int(self.random() * n)

    def between(self, low: int, high: int) -> int:
        return low + int(self.random() * (high - low))

    def pick(self, options: Any) -> Any:
        return options[int(self.random() * len(options))]

    # bytes

    def bytes_level(self, data: bytes) -> bytes:
        rng = self.rng
        buffer = bytearray(data)
        for _ in range(1 + int(rng.random() ** 3 * 4)):
            op = self.below(7)
            at = self.below(len(buffer) + 1)
            if op == 0 and buffer:  # flip bits
                at = min(at, len(buffer) - 1)
                buffer[at] ^= 1 << self.below(8)
            elif op == 1 and buffer:  # any byte
                buffer[min(at, len(buffer) - 1)] = self.below(256)
            elif op == 2:  # truncate
                del buffer[at:]
            elif op == 3:  # insert random bytes
                buffer[at:at] = rng.randbytes(self.between(1, 9))
            elif op == 4:  # insert a msgpack token that tends to hurt
                buffer[at:at] = self.pick(_INTERESTING_BYTES)
            elif op == 5:  # extend
                buffer += rng.randbytes(self.between(1, 17))
            else:  # cut a slice out
                del buffer[at : at + self.between(1, 9)]
        return bytes(buffer)

    # structure

    def structure_level(self, tree: Any, paths: list[tuple[Any, ...]]) -> bytes:
        op = self.below(5)
        if op == 0 or not paths:  # a value of any type in place of a field's
            tree = _replace(tree, self.pick(paths) if paths else (), self.value())
        elif op == 1:  # a key (or array element) gone
            tree = _remove(tree, self.pick(paths))
        elif op == 2:  # a key added where a map is
            tree = self.add_key(tree, paths)
        elif op == 3 and isinstance(tree, dict):  # another tag: of another type, or none
            tree = dict(tree)
            choice = self.below(4)
            if choice == 0:
                tree.pop(self.case.tag_field, None)
            elif choice == 1 and self.case.tags:
                tree[self.case.tag_field] = self.pick(self.case.tags)
            else:
                tree[self.case.tag_field] = self.value()
        else:  # several fields at once
            for _ in range(self.between(2, 5)):
                tree = _replace(tree, self.pick(paths), self.value())
        if self.case.json:
            return msgspec.json.encode(tree, enc_hook=repr)  # bytes and exts as strings
        return msgspec.msgpack.encode(tree)

    def words_level(self, words: list[bytes]) -> bytes:
        """A line's words replaced, dropped, added or run together."""
        words = list(words)
        for _ in range(1 + self.below(3)):
            op, at = self.below(4), self.below(len(words) + 1)
            word = self.pick(_WORDS) if self.random() < 0.7 else self.string().encode()
            if op == 0 and at < len(words):
                words[at] = word
            elif op == 1 and at < len(words):
                del words[at]
            elif op == 2:
                words.insert(at, word)
        separator = b" " if self.random() < 0.8 else self.pick((b"", b"  ", b"\t", b"\n"))
        return separator.join(words)

    def add_key(self, tree: Any, paths: list[tuple[Any, ...]]) -> Any:
        maps = [p for p in paths if isinstance(_at(tree, p), dict)] or [()]
        path = self.pick(maps)
        target = _at(tree, path)
        if not isinstance(target, dict):
            return tree
        key: Any = self.string() if self.rng.random() < 0.8 else self.pick((0, -1, None, b"t"))
        return _replace(tree, path, {**target, key: self.value()})

    def value(self, depth: int = 0) -> Any:
        """A random value of a random type (nested ones only a few levels deep)."""
        rng = self.rng
        kind = self.below(10 if depth < 3 else 8)
        if kind == 0:
            return None
        if kind == 1:
            return rng.random() < 0.5
        if kind == 2:
            edges = (0, 1, -1, 255, 65536, 2**31, 2**63 - 1, -(2**63), 2**64 - 1)
            return self.pick(edges) if rng.random() < 0.5 else self.between(-1000, 1000)
        if kind == 3:
            return self.pick((0.0, -0.0, 1.5, -1e300, math.inf, -math.inf, math.nan, rng.random()))
        if kind == 4:
            return self.string()
        if kind == 5:
            return rng.randbytes(self.pick((0, 1, 5, 40)))
        if kind == 6:
            return msgspec.msgpack.Ext(self.between(-128, 128), rng.randbytes(self.pick((1, 4, 8))))
        if kind == 7:
            return self.pick(("", "x", 0, b"", None))
        if kind == 8:
            return [self.value(depth + 1) for _ in range(self.below(4))]
        return {self.string(): self.value(depth + 1) for _ in range(self.below(4))}

    def string(self) -> str:
        rng = self.rng
        return self.pick(
            (
                "",
                "t",
                "id",
                "ctx",
                "args",
                "error",
                "sp.invocation.v1",
                "é€\U0001f600",
                "\x00",
                "x" * self.between(1, 300),
                str(rng.random()),
            )
        )


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> Any:
    """Every key path into nested maps and arrays."""
    items = (
        tree.items()
        if isinstance(tree, dict)
        else enumerate(tree)
        if isinstance(tree, list)
        else ()
    )
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


def _at(tree: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _has(tree: Any, key: Any) -> bool:
    if isinstance(tree, dict):
        return key in tree
    return isinstance(tree, list) and isinstance(key, int) and key < len(tree)


def _replace(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``tree`` with the value at ``path`` replaced: copies along the path only, so the
    sample itself is never changed. A path an earlier mutation removed changes nothing."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if not _has(tree, head):
        return tree
    copy = dict(tree) if isinstance(tree, dict) else list(tree)
    copy[head] = _replace(tree[head], rest, value)
    return copy


def _remove(tree: Any, path: tuple[Any, ...]) -> Any:
    head, rest = path[0], path[1:]
    if not _has(tree, head):
        return tree
    copy = dict(tree) if isinstance(tree, dict) else list(tree)
    if rest:
        copy[head] = _remove(tree[head], rest)
    else:
        del copy[head]
    return copy


# --- the test ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_mutated_message_decodes_or_raises_protocol_error(case: Case) -> None:
    rng = random.Random(f"{SEED}:{case.name}")
    mutate = Mutator(rng, case)
    started = time.perf_counter()
    decoded = refused = 0
    print(f"fuzzing {case.name} with seed {SEED} ({COUNT} messages)")
    for i in range(COUNT):
        data = mutate()
        try:
            value = case.decode(data)
        except protocol.ProtocolError:
            refused += 1
            continue
        except BaseException as exc:
            pytest.fail(
                f"{case.name}: message {i} of seed {SEED} (replay: SP_FUZZ_SEED={SEED}) raised "
                f"{exc!r}, not ProtocolError, for {data.hex()}"
            )
        decoded += 1
        case.reencode(value)
    print(f"{decoded} decoded, {refused} refused in {time.perf_counter() - started:.2f} s")
    assert decoded + refused == COUNT
    assert refused > COUNT // 10 and decoded > COUNT // 100  # the mutator does both
