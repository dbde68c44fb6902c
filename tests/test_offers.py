"""Big payloads of direct calls, offered by their owner and pulled in chunks over NATS."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

import fns
import superpose as sp
from conftest import Lattice, bare_executor, bare_invocation, raw_call
from superpose import protocol
from superpose.config import SPILL_THRESHOLD_BYTES
from superpose.lattice import offers, payload
from superpose.lattice.connection import connect
from superpose.lattice.objects import chunk_size_for
from superpose.lattice.offers import OfferGoneError, Offers
from superpose.node.executor_process import Call

BIG = SPILL_THRESHOLD_BYTES * 8


async def _with_owner(lattice: Lattice, body: Callable[[Offers, Any], Awaitable[None]]) -> None:
    """An owner serving offers on one connection, a reader on another (as across processes)."""
    owner_nc = await connect(lattice.url, name="test-offers-owner")
    reader_nc = await connect(lattice.url, name="test-offers-reader")
    owned = Offers(owner_nc, "testowner" + os.urandom(4).hex())
    await owner_nc.subscribe(owned.subject, cb=owned.serve)
    await _until_answered(reader_nc, owned.subject)
    try:
        await body(owned, reader_nc)
    finally:
        await owner_nc.close()
        await reader_nc.close()


async def _until_answered(reader: Any, subject: str) -> None:
    """Until the owner's subscription is live. Not ``flush()``: nats-py writes its PING
    straight to the socket, ahead of a SUB still waiting in its buffer, so the PONG can
    come back before the server has the subscription (seen as "no responders")."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            await reader.request(subject, b"probe 0 0", timeout=1)
            return
        except NoRespondersError:
            assert asyncio.get_running_loop().time() < deadline, f"nobody answers {subject}"
            await asyncio.sleep(0.01)


def test_an_offer_is_pulled_whole_then_released(lattice: Lattice) -> None:
    async def body(owned: Offers, reader: Any) -> None:
        chunk = chunk_size_for(reader)
        for size in (1, chunk, 3 * chunk + 123):
            data = os.urandom(size)
            payload = owned.offer(data, protocol.CODEC_PICKLE, hold_s=60)
            assert payload.source == owned.subject and payload.size == size
            assert await offers.pull(reader, payload) == data
            assert await offers.pull(reader, payload) == data  # a retry may read it again
            await offers.release(reader, payload)
            await _until(lambda: len(owned) == 0)
            with pytest.raises(OfferGoneError, match="no longer offered"):
                await offers.pull(reader, payload)

    asyncio.run(_with_owner(lattice, body))


def test_an_unread_offer_expires_and_a_withdrawn_one_is_gone(lattice: Lattice) -> None:
    async def body(owned: Offers, reader: Any) -> None:
        stale = owned.offer(b"x" * 10, protocol.CODEC_PICKLE, hold_s=0.01)
        await asyncio.sleep(0.05)
        kept = owned.offer(b"y" * 10, protocol.CODEC_PICKLE, hold_s=60)  # sweeps the stale one
        assert len(owned) == 1
        with pytest.raises(OfferGoneError, match="no longer offered"):
            await offers.pull(reader, stale)
        owned.withdraw(kept)
        with pytest.raises(OfferGoneError, match="no longer offered"):
            await offers.pull(reader, kept)

    asyncio.run(_with_owner(lattice, body))


def test_a_garbled_pull_request_is_ignored_and_the_owner_keeps_serving(lattice: Lattice) -> None:
    async def body(owned: Offers, reader: Any) -> None:
        payload = owned.offer(b"z" * 100, protocol.CODEC_PICKLE, hold_s=60)
        await reader.publish(owned.subject, b"\xff\xfe not a request")
        await reader.publish(owned.subject, b"onlyoneword")
        with pytest.raises(NatsTimeout):  # words of a request, but not numbers: no answer
            await reader.request(owned.subject, f"{payload.blob} x y".encode(), timeout=0.3)
        assert await offers.pull(reader, payload) == b"z" * 100

    asyncio.run(_with_owner(lattice, body))


def test_pulling_from_an_owner_that_is_gone_names_the_payload(lattice: Lattice) -> None:
    async def body(owned: Offers, reader: Any) -> None:
        orphan = protocol.Payload(
            codec=protocol.CODEC_PICKLE,
            blob="deadbeef",
            size=10,
            source=protocol.offers_subject("nobody" + os.urandom(4).hex()),
        )
        with pytest.raises(OfferGoneError, match=r"deadbeef.*is gone"):
            await offers.pull(reader, orphan)

    asyncio.run(_with_owner(lattice, body))


def _blob_objects(client: sp.Client) -> int:
    async def count() -> int:
        stream = protocol.object_stream(protocol.BLOBS_BUCKET)
        info = await client.nc.jetstream().stream_info(stream)
        return int(info.state.messages)

    return client.run(count())


def test_direct_calls_pull_big_payloads_instead_of_storing_them(client: sp.Client) -> None:
    data = os.urandom(BIG)
    before = _blob_objects(client)
    assert fns.echo_size.remote(data) == BIG
    assert fns.identity.remote(data) == data
    assert fns.async_make_bytes.remote(BIG) == b"\x09" * BIG
    assert fns.relay_size.remote(BIG) == BIG  # an executor offers and pulls for nested calls
    assert _blob_objects(client) == before  # nothing written to, or left in, the store
    assert len(client.offers) == 0  # every argument withdrawn once its call settled


def test_a_big_argument_is_withdrawn_when_its_call_fails(client: sp.Client) -> None:
    with pytest.raises(sp.RemoteError, match="Boom"):
        fns.fail.remote("x" * BIG)
    assert len(client.offers) == 0


def test_durable_calls_still_spill_big_payloads_to_the_object_store(client: sp.Client) -> None:
    before = _blob_objects(client)
    assert fns.echo_size.spawn(os.urandom(BIG)).result(timeout=60) == BIG
    assert _blob_objects(client) > before  # it must outlive every process


def test_an_argument_its_caller_no_longer_offers_fails_the_call_clearly(
    client: sp.Client,
) -> None:
    args = protocol.Payload(
        codec=protocol.CODEC_PICKLE,
        blob="c0ffee",
        size=BIG,
        source=protocol.offers_subject("gonecaller" + os.urandom(4).hex()),
    )
    result = raw_call(client, fns.echo_size, "orphan-args-1", args, deadline=time.time() + 30)
    assert result.error is not None
    assert result.error.kind == protocol.ERR_INTERNAL
    assert "c0ffee" in result.error.message and "is gone" in result.error.message
    assert fns.square.remote(5) == 25  # the node keeps serving


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def test_an_owner_that_answers_badly_or_never_is_a_clear_error(
    lattice: Lattice, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offers, "CHUNK_TIMEOUT_S", 0.2)

    async def body() -> None:
        nc = await connect(lattice.url, name="test-offers-bad-owner")
        try:
            short = protocol.offers_subject("short" + os.urandom(4).hex())
            silent = protocol.offers_subject("silent" + os.urandom(4).hex())

            async def answer_short(msg: Any) -> None:
                await nc.publish(msg.reply, b"abc")

            async def answer_nothing(msg: Any) -> None:
                return None

            await nc.subscribe(short, cb=answer_short)
            await nc.subscribe(silent, cb=answer_nothing)
            await _until_answered(nc, short)
            wrong = protocol.Payload(protocol.CODEC_PICKLE, blob="b1", size=10, source=short)
            with pytest.raises(OfferGoneError, match="answered 3 bytes at offset 0, expected 10"):
                await offers.pull(nc, wrong)
            lost = protocol.Payload(protocol.CODEC_PICKLE, blob="b2", size=10, source=silent)
            with pytest.raises(OfferGoneError, match="no answer for the chunk at offset 0"):
                await offers.pull(nc, lost)
        finally:
            await nc.close()

    asyncio.run(body())


def test_a_stopping_executor_keeps_serving_results_not_yet_pulled(
    lattice: Lattice, tmp_path: Path
) -> None:
    """Its agent closes its channel right after the ``done`` frame, as at shutdown or
    eviction: the caller, not yet done pulling, still gets the whole result, and the
    executor then exits by itself (not killed)."""
    (tmp_path / "bigmod.py").write_text("def make(n):\n    return b'x' * n\n")

    async def body() -> None:
        nc = await connect(lattice.url, name="test-offers-caller")
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_reply(msg: Any) -> None:
            await replies.put(msg.data)

        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on_reply)
        executor = await bare_executor(lattice.url, "ndrain")
        try:
            await executor.load("d" * 64, str(tmp_path), "bigmod")
            inv = bare_invocation("drain1", "d" * 64, "bigmod", "make", BIG)
            done = asyncio.get_running_loop().create_future()
            executor.run(inv.encode(), inbox, Call(inv.id, True, None, done))
            result = protocol.Result.decode(await asyncio.wait_for(replies.get(), 30))
            assert result.value is not None and result.value.source is not None  # offered
            closing = asyncio.create_task(executor.close(grace_s=0))
            await asyncio.sleep(0.2)  # the channel is closed: the executor is stopping
            data = await payload.unwrap(nc, result.value)
            assert payload.decode_value(data, protocol.CODEC_PICKLE) == b"x" * BIG
            await payload.discard(nc, result.value)
            await closing
            assert executor.process.returncode == 0
        finally:
            executor.kill()
            await nc.close()

    asyncio.run(body())
