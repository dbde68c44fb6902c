"""JSON as RFC 8259 defines it, at the edges where strangers send or read it.

Python's ``json`` is lenient both ways: it reads ``NaN`` and ``Infinity`` (which are
not JSON), turns ``1e400`` into ``inf``, raises ``RecursionError`` on deep nesting and
a bare ``ValueError`` on a 5,000-digit integer; and it writes ``NaN``, which no strict
parser reads back. Every place the gateway reads a request body goes through
``loads``, and every result it answers with through ``dumps`` or
``check_encoded``, so one set of rules holds everywhere, each refusal naming what
was refused.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any

from superpose.errors import BadRequestError

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects read. Deeper is refused before it can
exhaust a parser's stack (Python's own fails with ``RecursionError`` near 1,000)."""
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300
"""Longest integer read: Python's own limit for turning digits into an ``int``."""

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_PARENS = bytes.maketrans(b"[]{}", b"()()")
_MAYBE_NOT_FINITE = (b"NaN", b"Infinity")


def loads(data: bytes) -> Any:
    """``data`` parsed as strict UTF-8 JSON; ``BadRequestError`` naming what was refused."""
    try:
        text = data.decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequestError(_too_deep()) from None
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"not valid JSON: it is not UTF-8 ({exc})") from None
    except _Refused as exc:
        raise BadRequestError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"not valid JSON: {exc}") from None
    except ValueError:  # int(): the only other ValueError json.loads raises
        raise BadRequestError(f"JSON integer with more than {MAX_INT_DIGITS} digits") from None
    if _deeper_than(data, MAX_DEPTH):
        raise BadRequestError(_too_deep())
    return value


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """``value`` as JSON bytes; ``ValueError`` naming a NaN or infinite float, which
    JSON cannot carry, rather than writing a document no strict parser reads."""
    try:
        return json.dumps(value, default=default, allow_nan=False).encode()
    except ValueError as exc:
        if "JSON compliant" not in str(exc):
            raise
        what = repr(value) if isinstance(value, float) else "a float in it (NaN or Infinity)"
        raise ValueError(f"{what} is not valid JSON: JSON has no NaN or Infinity") from None


def check_encoded(data: bytes) -> None:
    """Refuse (``ValueError``) encoded JSON that holds ``NaN`` or ``Infinity``.

    For JSON passed through without decoding: a search for the two words costs a
    scan, and only a document that contains them (in a string, most often) is parsed.
    """
    if not any(word in data for word in _MAYBE_NOT_FINITE):
        return
    try:
        json.loads(data, parse_constant=_refuse_constant)
    except _Refused as exc:
        raise ValueError(str(exc)) from None
    except (ValueError, RecursionError):  # not ours to judge: it is passed through as it was
        return


class _Refused(ValueError):
    """A value the JSON standard does not allow, found while parsing."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        shown = text if len(text) <= 40 else f"{text[:37]}..."
        raise _Refused(f"JSON number {shown} is too large for a float")
    return value


def _too_deep() -> str:
    return f"JSON nested deeper than {MAX_DEPTH} levels"


def _deeper_than(data: bytes, limit: int) -> bool:
    """Whether arrays and objects in (valid) JSON ``data`` nest deeper than ``limit``.

    At C speed: strings out, only brackets kept, then each pass deletes the innermost
    pairs; whatever is left after ``limit`` passes was nested deeper.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", data).translate(_AS_PARENS, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = brackets.replace(b"()", b"")
        if not shorter:
            return False
        brackets = shorter
    return b"()" in brackets
