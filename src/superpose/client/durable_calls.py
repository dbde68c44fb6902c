"""Durable calls on the caller's side: what is persisted, cancelled, duplicated and
looked up, and how a stored result settles its future.

The envelopes themselves travel through ``durable.Submitter``; this module
decides what goes in them: ids (an idempotency key names its invocation, so a
repeat finds the first), needs classes, and the futures' cancel hooks.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from superpose import protocol
from superpose.client.durable import Durable, Submitter
from superpose.client.futures import Future, fail, remote_error, succeed
from superpose.client.options import Options
from superpose.client.threads import fire, run
from superpose.errors import (
    BadRequestError,
    CallTimeoutError,
    SuperposeError,
    as_superpose_error,
)
from superpose.lattice import payload, results
from superpose.lattice.connection import Assets
from superpose.registry.mirror import Target


class Placing(Protocol):
    """Placement as durable calls need it."""

    def needs(
        self, target: Target, options: Options, *, durable: bool = False
    ) -> dict[str, str] | None: ...

    async def open_class(self, inv: protocol.Invocation, wait_s: float) -> None: ...


class DurableCalls:
    def __init__(
        self,
        nc: NATS,
        assets: Assets,
        *,
        client_id: str,
        loop: asyncio.AbstractEventLoop,
        seq: Iterator[int],
        placement: Placing,
    ) -> None:
        self._nc = nc
        self._assets = assets
        self._client_id = client_id
        self._loop = loop
        self._seq = seq
        self._placement = placement
        self._submitter: Submitter | None = None
        """Made by ``start``, on the loop it sends from."""
        self._keyed: dict[str, Future] = {}
        """Durable submissions with an idempotency key still waiting, by id."""
        self._cancelling: set[asyncio.Task[list[str]]] = set()
        """Cancels on their way to the lattice: closing waits for them."""
        self.own_results_only = False
        """True in an executor: its user may read its own results only, one by one."""

    @property
    def started(self) -> bool:
        """Submissions are refused before ``start``: nothing would send them."""
        return self._submitter is not None

    def start(self, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._submitter = Submitter(
            self._nc,
            self._client_id,
            self._settle_later,
            self._assets.cancels,
            self._assets.issued,
        )
        self._submitter.one_by_one = self.own_results_only
        self._submitter.start(spawn)

    def fail_all(self, error: SuperposeError) -> None:
        if self._submitter is not None:
            self._submitter.fail_all(error)

    def on_notify(self, msg: Msg) -> None:
        """Results a node stored for us, batched (they arrive on the reply subscription)."""
        if self._submitter is not None:
            self._submitter.on_notify(msg)

    # --- submitting ------------------------------------------------------------------

    def submit(
        self,
        target: Target,
        raw_args: payload.Encoded,
        codec: str,
        options: Options,
        ctx: protocol.CallContext,
    ) -> Future:
        """Persist one invocation from any thread; the future resolves with its result."""
        submitter = self._sender()
        inv = self._invocation(target, raw_args, codec, options, ctx)
        future = Future()
        future.invocation_id = inv.id
        future.idempotency_key = options.idempotency_key
        if future.idempotency_key is not None and self._join_keyed(future):
            return future
        future.on_cancel = self._cancel_from_future
        durable = Durable(future, inv, raw_args)
        if inv.needs:
            fire(self._loop, self._submit_placed(durable, options.wait_for_node))
        else:
            submitter.submit(durable)
        return future

    def _invocation(
        self,
        target: Target,
        raw_args: payload.Encoded,
        codec: str,
        options: Options,
        ctx: protocol.CallContext,
    ) -> protocol.Invocation:
        key = options.idempotency_key
        return protocol.Invocation(
            id=(
                protocol.idempotent_id(hashlib.sha256(key.encode()).hexdigest()[:40])
                if key is not None
                # numbered only here and in resubmit, in order: the issued record
                # (lattice/issued.py) counts on durable numbers having no gaps
                else protocol.durable_id(self._client_id, next(self._seq))
            ),
            app=target.app,
            fn=target.fn,
            digest=target.digest,
            env=target.env,
            module=target.module,
            qualname=target.qualname,
            args=protocol.Payload(codec=codec, size=len(raw_args)),
            deadline=time.time() + protocol.RESULT_TTL_S,
            timeout_s=options.timeout,
            memory_mb=options.memory,
            ctx=ctx,
            retries=options.retries or int(target.options.get("retries", 0) or 0),
            retry_on=list(options.retry_on) or None,
            needs=self._placement.needs(target, options, durable=True),
            settings=options.settings(target.options),
            memo=options.memo_ask,
        )

    def _join_keyed(self, future: Future) -> bool:
        """True if an earlier submission with the same key is still waiting: one run
        serves both futures. Otherwise this one is the key's until it is done."""
        inv_id = future.invocation_id
        already = self._keyed.get(inv_id)
        if already is not None and not already.done():
            _chain(already, future)
            return True
        self._keyed[inv_id] = future
        future.add_done_callback(lambda _: self._keyed.pop(inv_id, None))
        return False

    async def _submit_placed(self, durable: Durable, wait_s: float) -> None:
        """Durable work with needs goes to its needs class's subject, which only the
        nodes meeting the needs pull from; fail now if no such node is alive."""
        submitter = self._sender()
        try:
            await self._placement.open_class(durable.inv, wait_s)
        except Exception as exc:
            fail(durable.future, as_superpose_error(exc))
            return
        submitter.submit(durable)

    def resubmit(self, inv: protocol.Invocation) -> Future:
        """Submit an invocation again (already wrapped) under a new id, from attempt 1."""
        submitter = self._sender()
        inv.id = protocol.durable_id(self._client_id, next(self._seq))
        inv.attempt = 1
        inv.not_before = 0.0
        inv.deadline = time.time() + protocol.RESULT_TTL_S
        future = Future()
        future.invocation_id = inv.id
        future.on_cancel = self._cancel_from_future
        submitter.submit(Durable(future, inv, raw_args=b""))
        return future

    def _sender(self) -> Submitter:
        assert self._submitter is not None, "the client checks `started` first"
        return self._submitter

    # --- cancelling and duplicating --------------------------------------------------

    def _cancel_from_future(self, future: Future) -> None:
        fire(self._loop, self._cancel_soon([future.invocation_id]))

    async def _cancel_soon(self, ids: list[str]) -> None:
        """A cancel fired from any thread, tracked so that closing the client right
        after it does not drop it (the invocation would run on)."""
        task = asyncio.ensure_future(self.cancel(ids))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)
        await task

    async def finish_cancels(self, timeout: float) -> None:
        """Before the connection closes: let cancels under way reach the lattice."""
        if self._cancelling:
            await asyncio.wait(self._cancelling, timeout=timeout)

    async def cancel(self, ids: list[str]) -> list[str]:
        """Cancel durable invocations by id; returns those that had not finished."""
        return await self._sender().cancel(ids)

    def cancel_many(self, futures: list[Future]) -> None:
        ids = [f.invocation_id for f in futures if f.invocation_id]
        if ids:
            fire(self._loop, self._cancel_soon(ids))

    def speculate(self, invocation_id: str) -> None:
        """Launch a second copy of a waiting durable invocation (a straggler)."""
        fire(self._loop, self._sender().speculate(invocation_id))

    def stop_copies(self, invocation_id: str) -> None:
        """Kill copies of a finished invocation still running somewhere."""
        cancel = protocol.Cancel([invocation_id]).encode()
        fire(self._loop, self._nc.publish(protocol.CANCEL_SUBJECT, cancel))

    # --- results ---------------------------------------------------------------------

    async def lookup(
        self, invocation_id: str, *, wait: bool = True, timeout: float | None = None
    ) -> protocol.Result | None:
        """The stored result of a durable invocation (None if not finished in time)."""
        if not protocol.is_valid_invocation_id(invocation_id):
            raise BadRequestError(f"{invocation_id!r} is not an invocation id")
        if not wait:
            return await results.get(self._assets, invocation_id)
        return await results.wait(self._assets, invocation_id, timeout)

    def result(self, invocation_id: str, *, timeout: float | None = None) -> Any:
        """Wait for a durable invocation's result by id, from another thread."""
        found = run(self._loop, self.lookup(invocation_id, timeout=timeout))
        if found is None:
            raise CallTimeoutError(f"invocation {invocation_id} has no result after {timeout} s")
        future = Future()
        run(self._loop, self.settle(future, found))
        return future.result()

    def _settle_later(self, future: Future, result: protocol.Result) -> None:
        self._loop.create_task(self.settle(future, result))

    async def settle(self, future: Future, result: protocol.Result) -> None:
        """Settle a future with a stored result: its value, its error, or its cancellation."""
        if future.done():
            return
        if result.error is not None:
            if result.error.kind == protocol.ERR_CANCELLED:
                future.on_cancel = None
                future.cancel()
            else:
                fail(future, remote_error(result.error, result.node))
            return
        assert result.value is not None
        value = result.value
        future.result_payload = value  # a dependent is sent this, not the bytes
        data: protocol.Buffer | None = value.data
        if value.blob is not None and future.lazy_ok:  # feeds a dependent: fetched if asked

            async def fetch() -> Any:
                return payload.decode_value(await payload.unwrap(self._nc, value), value.codec)

            future.settle_lazily(value, self._loop, fetch)
            return
        if value.blob is not None:  # kept: others may fetch this result by id
            try:
                data = await payload.unwrap(self._nc, value)
            except Exception as exc:
                fail(future, as_superpose_error(exc))
                return
        succeed(future, value.codec, data)


def _chain(source: Future, target: Future) -> None:
    """``target`` ends as ``source`` does (a repeated idempotency key)."""

    source.add_done_callback(lambda _: target.adopt(source))  # a lazy result stays lazy
    target.accepted = source.accepted
