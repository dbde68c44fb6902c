"""Results as the gateway answers them: spliced in as the JSON bytes a node produced,
once they are known to be JSON a strict parser reads.

Nodes refuse to encode NaN or Infinity, but a result can come from elsewhere (a
Python caller's durable invocation, decoded and re-encoded here; a node of an older
version): a document with ``NaN`` in it would be accepted by Python and refused by
every browser, so it becomes a clear 500 instead of an answer no client can read.
"""

from __future__ import annotations

from superpose.errors import SerializationError
from superpose.lattice import strict_json


def checked(value: bytes, what: str) -> bytes:
    """``value`` unchanged, or ``SerializationError`` (a 500) naming ``what`` held a
    NaN or Infinity. Costs a scan of the bytes; only a suspect one is parsed."""
    try:
        strict_json.check_encoded(value)
    except ValueError as exc:
        raise SerializationError(f"{what} cannot be answered as JSON: {exc}") from None
    return value
