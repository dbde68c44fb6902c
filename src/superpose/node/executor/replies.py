"""Everything an executor sends back, in the order it was said: one ordered path.

A call's frames for the agent (start, block, unblock), the lines it prints and
its result are all put in one ``Outbox``, from a lane thread or from the loop,
and one task sends them in that order. Printed lines used to leave through
``run_coroutine_threadsafe`` and results through a queue of their own, so a
result could overtake the line printed just before it (about 9 runs in 80 of the
script-mode test).

A direct call's result goes to its caller's reply subject. A durable call's
result goes to this node's agent with its ``done`` frame, over the channel: if
the call printed, the connection is flushed first (one server round trip), so
its output reaches the caller before the agent's notice of the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.node.channel import Channel
from superpose.support.outbox import Outbox

log = logging.getLogger("superpose.executor")
OUTPUT_FLUSH_S = 1
"""Seconds a durable call's result waits at most for its output to be flushed."""


@dataclass(slots=True)
class Publish:
    """A line a call printed, for its caller or the app's log stream."""

    subject: str
    data: bytes


@dataclass(slots=True)
class Answer:
    """A call's result, for ``reply``. ``express``: the call came straight from its
    caller, and the agent hears it ended with the next frame or ``channel.LAZY_S``
    later (a back-to-back express call's ``Took`` carries the last one's ``Done``: one
    wake-up of the agent per call, not two)."""

    reply: str
    result: protocol.Result
    express: bool = False


Said = protocol.Frame | Publish | Answer


class Replies:
    def __init__(
        self,
        nc: NATS,
        channel: Channel[protocol.FromAgent],
        results_here: str,
        answered: Callable[[], None],
    ) -> None:
        self.nc = nc
        self.channel = channel
        self.results_here = results_here
        """The reply subject of this node's durable items: answered over the channel."""
        self._answered = answered
        self._outbox: Outbox[Said] = Outbox(asyncio.get_running_loop())
        self.printed: set[str] = set()
        """Calls that have printed (a durable one's output is flushed before its result)."""
        self._busy = False

    # --- from any thread -------------------------------------------------------------

    def frame(self, frame: protocol.Frame) -> None:
        self._outbox.put(frame)

    def printed_line(self, invocation_id: str, subject: str, data: bytes) -> None:
        self.printed.add(invocation_id)
        self._outbox.put(Publish(subject, data))

    def answer(self, reply: str, result: protocol.Result, express: bool = False) -> None:
        self._outbox.put(Answer(reply, result, express))

    # --- on the loop -----------------------------------------------------------------

    async def send_forever(self) -> None:
        """The one sender: bursts in order, each item in order."""
        while True:
            burst = await self._outbox.next_burst()
            self._busy = True
            for said in burst:
                try:
                    await self._send(said)
                except Exception:  # one failed send must not stop the ones after it
                    log.exception("could not send %s", type(said).__name__)
            self._busy = False

    async def settle(self, within_s: float) -> None:
        """Until everything said so far has left (the executor is stopping)."""
        deadline = time.monotonic() + within_s
        while (len(self._outbox) or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def _send(self, said: Said) -> None:
        if isinstance(said, Publish):
            await self.nc.publish(said.subject, said.data)
        elif isinstance(said, Answer):
            await self._send_answer(said.reply, said.result, said.express)
        else:
            self.channel.send(said)

    async def _send_answer(self, reply: str, result: protocol.Result, express: bool) -> None:
        done = protocol.Done(result.id, ok=result.error is None)
        printed = result.id in self.printed
        self.printed.discard(result.id)
        try:
            if reply == self.results_here:  # for our own agent: no trip through NATS
                if printed:  # its output reaches the caller before the agent's notice
                    with contextlib.suppress(Exception):  # late output beats a late result
                        await self.nc.flush(timeout=OUTPUT_FLUSH_S)
                done.result = result.encode()
            elif reply:
                await self.nc.publish(reply, result.encode())
        finally:  # the agent must hear the call ended, whatever became of its result
            # After the reply has left, not before: ending strays (a kill(-1) scan of
            # every process, ~20 us) was on every sandboxed warm call's path. Its
            # publish only queued the reply for nats-py's flusher, which this callback
            # follows; the Done frame, flushed at the end of this iteration too, follows
            # it, so no next call of the agent's starts in between.
            asyncio.get_running_loop().call_soon(self._answered)
            self.channel.send(done, lazy=express and done.result is None)
