"""The client's one reply subscription, and the output of its calls.

Direct results, durable notifications and the calls' log lines all arrive under
one wildcard subject, so one nats-py subscription handles them in order: a
call's output reaches the caller before its result (two subscriptions are two
tasks, and a result could overtake the last line printed before it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from nats.aio.msg import Msg

from superpose import protocol, runtime

if TYPE_CHECKING:
    from superpose.client.direct import Call

LogSink = Callable[[protocol.LogRecord], None]


def print_log_record(record: protocol.LogRecord) -> None:
    """Remote prints, prefixed with the function and the node that printed them."""
    stream = sys.stderr if record.stream in ("stderr", "log") else sys.stdout
    stream.write(f"[{record.fn}@{record.node}] {record.line}\n")
    stream.flush()


class Settles(Protocol):
    """Direct calls as replies need them."""

    @property
    def calls(self) -> Mapping[str, Call]: ...

    async def settle(self, call: Call, msg: Msg) -> None: ...


class Notified(Protocol):
    """Durable calls as replies need them."""

    def on_notify(self, msg: Msg) -> None: ...


class Replies:
    def __init__(
        self, client_id: str, direct: Settles, durable: Notified, log_sink: LogSink | None
    ) -> None:
        self.subject = protocol.reply_wildcard(client_id)
        self.log_sink = log_sink
        """Where the output of this client's calls goes; None: it is not sent here."""
        self._log_subject = protocol.client_log_subject(client_id)
        self._direct = direct
        self._durable = durable

    def with_output(self, ctx: protocol.CallContext | None) -> protocol.CallContext:
        """The context a call is sent with: it asks for the call's output when there is
        a sink for it, unless an outer call's caller already asked for it."""
        ctx = ctx or runtime.child_context()
        if ctx.log_to is None and self.log_sink is not None:
            ctx.log_to = self._log_subject
        return ctx

    async def dispatch(self, msg: Msg) -> None:
        inv_id = msg.subject.rsplit(".", 1)[-1]
        if inv_id == protocol.CLIENT_LOG_TOKEN:
            self._on_log(msg)
            return
        if inv_id == protocol.DURABLE_NOTIFY_TOKEN:
            self._durable.on_notify(msg)
            return
        call = self._direct.calls.get(inv_id)
        if call is not None:
            await self._direct.settle(call, msg)

    def _on_log(self, msg: Msg) -> None:
        if self.log_sink is not None:
            try:
                self.log_sink(protocol.LogRecord.decode(msg.data))
            except Exception:  # a broken log line must never break calls
                return
