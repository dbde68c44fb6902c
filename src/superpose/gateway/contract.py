"""What the gateway accepts, as data: each text it validates, and the ``wait`` range.

The handlers check requests with these objects and ``openapi.py`` writes its
schemas from the same objects, so the document cannot promise more, or less, than
the gateway takes. ``tests/test_http_contract.py`` holds the two to each other.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from superpose import protocol
from superpose.errors import BadRequestError
from superpose.registry.mirror import MIN_VERSION_PREFIX

DIGEST_CHARS = 64
"""A version's digest: sha256, in hex."""
MAX_WAIT_S = 60.0
"""``GET /v1/invocations/{id}?wait=S`` waits at most this long; more is refused."""
IDEMPOTENCY_KEY_MAX_CHARS = 1024
"""As ``Options.idempotency_key`` allows."""


@dataclass(frozen=True)
class Text:
    """A text parameter accepted only whole-matching ``pattern``, at most ``max_chars``.

    ``pattern`` is a regular expression both Python and JSON Schema (ECMA-262) read
    alike: character classes, groups, ``|``, ``?`` and counted repeats, no anchors
    (``schema`` adds them, ``fullmatch`` needs none).
    """

    what: str
    """How a refusal names it: ``"app name"``, ``"X-Superpose-Version header"``."""
    pattern: str
    max_chars: int
    hint: str
    """What a good one looks like, for the refusal's message and the document."""
    reserved: tuple[str, ...] = ()
    """Texts the pattern matches that are taken for something else."""
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", re.compile(self.pattern))

    def accepts(self, text: str) -> bool:
        return (
            len(text) <= self.max_chars
            and self._compiled.fullmatch(text) is not None
            and text not in self.reserved
        )

    def check(self, text: str) -> str:
        """``text``, or a BadRequestError naming what is wrong with it."""
        if not self.accepts(text):
            raise BadRequestError(f"{text!r} is not a valid {self.what}: {self.hint}")
        return text

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "string",
            "pattern": f"^(?:{self.pattern})$",
            "minLength": 1,
            "maxLength": self.max_chars,
        }
        if self.reserved:
            schema["not"] = {"enum": list(self.reserved)}
        return schema


_NAME = protocol.NAME_PATTERN
_VERSION = rf"{_NAME}|[0-9a-f]{{{MIN_VERSION_PREFIX},{DIGEST_CHARS}}}"
_NAME_HINT = (
    f"letters, digits, _ and -, starting with a letter or _, at most "
    f"{protocol.NAME_MAX_CHARS} characters"
)
_VERSION_HINT = (
    f"an alias ({_NAME_HINT}) or a digest prefix of {MIN_VERSION_PREFIX} to "
    f"{DIGEST_CHARS} hex digits"
)

APP = Text("app name", _NAME, protocol.NAME_MAX_CHARS, _NAME_HINT)
API_PREFIX = "v1"
"""The first segment of the API's own paths: an app of that name has no HTTP entry."""
HTTP_APP = Text(
    "app name", _NAME, protocol.NAME_MAX_CHARS, f"{_NAME_HINT}, not {API_PREFIX}", (API_PREFIX,)
)
"""The first segment of ``/{app}/...``: the API's own paths are never forwarded."""
FUNCTION = Text(
    "function name",
    rf"{_NAME}\.{_NAME}(@(?:{_VERSION}))?",
    2 * protocol.NAME_MAX_CHARS + 2 + DIGEST_CHARS,
    f"APP.FN or APP.FN@VERSION; APP and FN: {_NAME_HINT}; VERSION: {_VERSION_HINT}",
)
VERSION = Text("X-Superpose-Version header", _VERSION, DIGEST_CHARS, _VERSION_HINT)
INVOCATION_ID = Text(
    "invocation id",
    protocol.INVOCATION_ID_PATTERN,
    protocol.INVOCATION_ID_MAX_CHARS,
    "one or two dot-separated parts of letters, digits, _ and -, as /v1/invoke answered it",
)
TRACE_ID = Text(
    "trace id",
    protocol.INVOCATION_ID_PATTERN,
    protocol.INVOCATION_ID_MAX_CHARS,
    "as the X-Superpose-Trace-Id header answered it",
)
IDEMPOTENCY_KEY = Text(
    "Idempotency-Key header",
    "[!-~]([ -~]*[!-~])?",
    IDEMPOTENCY_KEY_MAX_CHARS,
    f"printable ASCII, not starting or ending with a space, at most "
    f"{IDEMPOTENCY_KEY_MAX_CHARS} characters",
)
"""Printable ASCII: what an HTTP header carries unchanged (ends are trimmed)."""

_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
"""A decimal number as JSON Schema's ``number`` is written in a query string: no
``inf``, ``nan``, ``0x`` or ``1_0``, which Python's ``float()`` would also take."""


def wait_s(text: str | None) -> float:
    """Seconds ``?wait=`` asks for, 0 when absent; a BadRequestError naming ``wait``
    and its range for anything else than a number from 0 to MAX_WAIT_S."""
    if text is None:
        return 0.0
    wait = float(text) if _NUMBER.fullmatch(text) else math.nan
    if not 0 <= wait <= MAX_WAIT_S:
        raise BadRequestError(
            f"wait={text!r} is not allowed: wait is a number of seconds from 0 to {MAX_WAIT_S:g}"
        )
    return wait


def wait_schema() -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S}
