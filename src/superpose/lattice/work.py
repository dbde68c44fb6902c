"""The durable work stream's messages: envelopes of invocations on their work subject.

Written by callers (``client/durable.py``) and by nodes that retry, split or hand
back an envelope (``node/durable.py``), so it lives below both.
"""

from __future__ import annotations

from superpose import protocol
from superpose.lattice.batch import Message


def work_message(inv: protocol.Invocation, envelope_id: str, items: list[bytes]) -> Message:
    """An envelope on its function's work subject, its id the stream's de-duplication key."""
    envelope = protocol.Envelope(id=envelope_id, items=items)
    return Message(
        protocol.work_subject(inv.app, inv.fn, inv.needs),
        envelope.encode(),
        {"Nats-Msg-Id": envelope_id},
    )
