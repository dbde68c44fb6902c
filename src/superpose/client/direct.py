"""Direct calls: request and reply over core NATS, at most once, with retries.

Submissions go through an outbox drained by one sender task, so 20,000 spawns
cost 20,000 publishes and one write per batch, not 20,000 tasks. A call goes to
the queue group (NATS picks a node), to the executors holding its bundle warm
(express), or to the node chosen for its needs; its answer arrives on the
client's reply subscription and settles it here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from superpose import config, protocol
from superpose.client.futures import Future, fail, remote_error, succeed
from superpose.client.options import Options
from superpose.client.reaper import Reaper
from superpose.client.reconnects import Reconnects
from superpose.errors import NoNodesError, SuperposeError, as_superpose_error
from superpose.lattice import payload
from superpose.lattice.offers import Offers
from superpose.registry.mirror import Target
from superpose.support.outbox import Outbox
from superpose.support.retry import Backoff

RETRYABLE = (protocol.ERR_CRASHED, protocol.ERR_INTERNAL)
CALL_RETRY = Backoff(0.2)
"""Before a direct call is sent again (its node crashed, or no node answered)."""
OFFER_GRACE_S = 30.0
"""A big argument stays offered this long past its call's deadline, if never settled."""


@dataclass
class Call:
    """A direct call from submission until it is settled."""

    future: Future
    inv: protocol.Invocation
    raw_args: payload.Encoded
    attempts_left: int
    wait_for_node: float = 0.0
    placing: bool = False
    """Waiting for a node that meets its needs: no node holds it yet, none can be lost."""
    heard: float = 0.0
    """When a node last reported holding this call (or when it was sent)."""
    node: str = ""
    express: bool = False
    """Sent to its bundle's warm executors directly, and not answered yet."""
    retried: int = 0


class Placing(Protocol):
    """Placement as direct calls need it."""

    def needs(self, target: Target, options: Options) -> dict[str, str] | None: ...

    async def node_for(self, inv: protocol.Invocation, wait_s: float) -> str: ...

    def answered(self, node_id: str) -> None: ...


class Express(Protocol):
    """The express routes as direct calls need them."""

    def take(self, digest: str) -> bool: ...

    def release(self, digest: str) -> None: ...

    def went_cold(self, digest: str) -> None: ...


class DirectCalls:
    def __init__(
        self,
        nc: NATS,
        *,
        client_id: str,
        url: str,
        offers: Offers,
        loop: asyncio.AbstractEventLoop,
        seq: Iterator[int],
        placement: Placing,
        express: Express,
    ) -> None:
        self._nc = nc
        self._client_id = client_id
        self._url = url
        self._offers = offers
        self._loop = loop
        self._seq = seq
        """One count for all of this client's invocations, direct and durable."""
        self._placement = placement
        self._express = express
        self._calls: dict[str, Call] = {}
        self.calls: Mapping[str, Call] = self._calls
        """Calls sent and not settled, by invocation id (read by replies and the reaper)."""
        self._outbox: Outbox[Call] = Outbox(self._loop)
        """Calls submitted from any thread, sent in order by one task."""
        self._closed = False
        self.reaper = Reaper(self, Reconnects(nc))

    def start(self, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        spawn(self._send_loop())
        spawn(self.reaper.run())

    def close(self) -> None:
        """Stop sending: nats-py can swallow the sender's cancellation, and then the
        sender stops after its batch."""
        self._closed = True

    def fail_all(self, error: SuperposeError) -> None:
        for call in self._calls.values():
            fail(call.future, error)
        self._calls.clear()

    def submit(
        self,
        target: Target,
        raw_args: payload.Encoded,
        codec: str,
        options: Options,
        ctx: protocol.CallContext,
    ) -> Future:
        """Queue one call from any thread; one wake-up of the sender per batch."""
        timeout_s = options.timeout or target.options.get("timeout") or config.DEFAULT_TIMEOUT_S
        inv = protocol.Invocation(
            id=protocol.direct_id(self._client_id, next(self._seq)),
            app=target.app,
            fn=target.fn,
            digest=target.digest,
            env=target.env,
            module=target.module,
            qualname=target.qualname,
            args=protocol.Payload(codec=codec, size=len(raw_args)),
            deadline=time.time() + float(timeout_s) + config.WAIT_MARGIN_S,
            timeout_s=options.timeout,
            memory_mb=options.memory,
            ctx=ctx,
            needs=self._placement.needs(target, options),
            settings=options.settings(target.options),
            memo=options.memo_ask,
        )
        future = Future()
        future.invocation_id = inv.id
        retries = options.retries or int(target.options.get("retries", 0) or 0)
        if options.idempotent:  # safe to run again when its node dies
            retries = max(retries, 1)
        self._outbox.put(Call(future, inv, raw_args, retries, options.wait_for_node))
        return future

    # --- sending -------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while not self._closed:
            for call in await self._outbox.next_burst():
                try:
                    await self._send(call)
                except Exception as exc:  # spill or publish failed: fail this call only
                    fail(call.future, as_superpose_error(exc))
            # No flush(): nats-py's flusher writes the batch in one syscall as it is, and a
            # flush adds a PING write and a PONG to read to every call (measured: 10 % of
            # the client's CPU on a sequential warm call).

    async def _send(self, call: Call) -> None:
        inv = call.inv
        if call.future.cancelled():
            return
        if inv.args.data is None and inv.args.blob is None:
            hold_s = max(0.0, inv.remaining_s()) + OFFER_GRACE_S
            inv.args = payload.offer(self._offers, call.raw_args, inv.args.codec, hold_s)
            if inv.args.source is not None:  # retries resend it: withdrawn when settled
                args = inv.args
                call.future.add_done_callback(
                    lambda f: self._offers.withdraw(args, read=_read_once(f, call))
                )
        self._calls[inv.id] = call
        call.heard = time.monotonic()
        self.reaper.watch(inv)
        if inv.needs:
            call.placing = True
            self._loop.create_task(self._publish_or_fail(call))  # may wait for a node
        else:
            await self._publish(call)

    async def _publish_or_fail(self, call: Call) -> None:
        """Publish from a task or callback of its own: a failure fails this call only."""
        try:
            await self._publish(call)
        except Exception as exc:
            self.fail(call, as_superpose_error(exc))

    async def _publish(self, call: Call) -> None:
        """To the queue group (NATS picks a node), or to the chosen node when the call
        has needs or a pin; a retry chooses again."""
        inv = call.inv
        subject = protocol.call_subject(inv.app, inv.fn)
        if inv.needs:
            subject = await self._place(call)
        elif self._express.take(host := inv.host):
            call.express = True
            subject = protocol.express_subject(host, inv.app, inv.fn)
        try:
            await self._nc.publish(
                subject, inv.encode(), reply=protocol.reply_subject(self._client_id, inv.id)
            )
        except BaseException:
            self._express_settled(call)
            raise

    async def _place(self, call: Call) -> str:
        """The subject of the node chosen for a call with needs; while it waits for one,
        the call is not counted as lost."""
        inv = call.inv
        call.placing = True
        try:
            call.node = await self._placement.node_for(inv, call.wait_for_node)
        finally:
            call.placing = False
            call.heard = time.monotonic()
        return protocol.node_call_subject(call.node, inv.app, inv.fn)

    def _express_settled(self, call: Call) -> None:
        if call.express:
            call.express = False
            self._express.release(call.inv.host)

    # --- settling ------------------------------------------------------------------

    async def settle(self, call: Call, msg: Msg) -> None:
        """A node's answer to one of our direct calls: its result, its error, or no one."""
        inv_id = call.inv.id
        if call.inv.needs:
            self._placement.answered(call.node)
        no_responders = bool(msg.headers and msg.headers.get("Status") == "503")
        if call.express:
            self._express_settled(call)
            if no_responders:  # not warm anywhere: the queue group's nodes load it
                self._express.went_cold(call.inv.host)
                await self._publish_or_fail(call)
                return
        if no_responders:
            await self.retry_or_fail(call, self._no_nodes())
            return
        try:
            result = protocol.Result.decode(msg.data)
        except protocol.ProtocolError as exc:
            self.fail(call, SuperposeError(f"unreadable reply for {inv_id}: {exc}"))
            return
        if result.error is not None:
            error = remote_error(result.error, result.node)
            if result.error.kind in RETRYABLE:
                await self.retry_or_fail(call, error)
            else:
                self.fail(call, error)
            return
        self._calls.pop(inv_id, None)
        assert result.value is not None
        if result.value.blob is None:
            succeed(call.future, result.value.codec, result.value.data)
        else:
            self._loop.create_task(self._fetch_result(call.future, result.value))

    def _no_nodes(self) -> NoNodesError:
        return NoNodesError(
            "no node is serving the lattice: start one with `superpose up` or "
            f"`superpose worker --lattice {self._url}`"
        )

    async def _fetch_result(self, future: Future, value: protocol.Payload) -> None:
        """A big result stays with the executor that made it until pulled (then released)."""
        try:
            data = await payload.unwrap(self._nc, value)
        except Exception as exc:
            fail(future, as_superpose_error(exc))
            return
        succeed(future, value.codec, data)
        del data  # decoded and dropped: only then may its holder write that memory again
        await payload.discard(self._nc, value)

    async def retry_or_fail(self, call: Call, error: SuperposeError) -> None:
        """Send the call again after a pause while it has attempts left (same id: a late
        answer to the earlier attempt settles it just as well)."""
        self._express_settled(call)
        if call.attempts_left <= 0 or call.future.cancelled():
            self.fail(call, error)
            return
        call.attempts_left -= 1
        call.retried += 1
        await asyncio.sleep(CALL_RETRY.pause_s(call.retried))
        call.heard = time.monotonic()
        try:
            await self._publish(call)
        except Exception as exc:  # no node meets its needs any more
            self.fail(call, as_superpose_error(exc))

    def fail(self, call: Call, error: SuperposeError) -> None:
        """Settle a call with an error: nothing will answer it any more."""
        self._calls.pop(call.inv.id, None)
        self._express_settled(call)
        fail(call.future, error)


def _read_once(future: concurrent.futures.Future[Any], call: Call) -> bool:
    """Whether a settled call's arguments were read, and by one attempt only: an answer
    came (so its executor had decoded them) and nothing was sent twice (a slower
    first attempt could still be reading)."""
    return not future.cancelled() and future.exception() is None and call.retried == 0
