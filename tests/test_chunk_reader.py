"""lattice/chunk_reader.py against a real JetStream: a pinned consumer reads every
message on one subject, and starts again where it was when its consumer goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import pytest
from nats.aio.msg import Msg

from conftest import Lattice
from superpose.errors import SuperposeError
from superpose.lattice import chunk_reader
from superpose.lattice.connection import connect

STREAM = "T_CHUNKS"
SUBJECT = "t.chunks.one"


@pytest.fixture
async def nc(lattice: Lattice) -> AsyncIterator[Any]:
    conn = await connect(lattice.url, name="test-chunk-reader")
    js = conn.jetstream()
    await js.add_stream(name=STREAM, subjects=["t.chunks.>"])
    try:
        for i in range(3):
            await js.publish(SUBJECT, f"m{i}".encode())
        await js.publish("t.chunks.other", b"not this one")
        yield conn
    finally:
        await js.delete_stream(STREAM)
        await conn.close()


async def test_it_reads_the_subjects_messages_in_order(nc: Any) -> None:
    assert await chunk_reader.read(nc, STREAM, SUBJECT, 3, 30) == [b"m0", b"m1", b"m2"]


async def test_too_few_messages_is_an_error_naming_how_many_came(nc: Any) -> None:
    with pytest.raises(SuperposeError, match=f"3 of 5 messages on {SUBJECT} arrived in 1 s"):
        await chunk_reader.read(nc, STREAM, SUBJECT, 5, 1)


async def test_a_consumer_that_goes_away_is_replaced_from_where_it_was(nc: Any) -> None:
    js = nc.jetstream()
    reading = asyncio.ensure_future(chunk_reader.read(nc, STREAM, SUBJECT, 4, 60))

    async def first_consumer() -> str:
        while True:
            names = [c.name for c in await js.consumers_info(STREAM)]
            if names:
                return str(names[0])
            await asyncio.sleep(0.05)

    await js.delete_consumer(STREAM, await asyncio.wait_for(first_consumer(), 30))
    await js.publish(SUBJECT, b"m3")  # only a new consumer can deliver it
    assert await reading == [b"m0", b"m1", b"m2", b"m3"]


async def test_a_skipped_delivery_starts_the_consumer_again(nc: Any) -> None:
    reading = chunk_reader._Reading(nc, STREAM, SUBJECT, 3)
    skipped = Msg(nc, subject="x", reply=f"$JS.ACK.{STREAM}.c.1.9.2.0.0", data=b"m8")
    await reading.on_message(skipped)  # consumer sequence 2 where 1 was due
    assert reading.restart.is_set() and reading.parts == []


async def test_a_status_from_the_server_starts_the_consumer_again(nc: Any) -> None:
    reading = chunk_reader._Reading(nc, STREAM, SUBJECT, 3)
    deleted = Msg(nc, subject="x", data=b"", headers={"Status": "409"})
    await reading.on_message(deleted)
    assert reading.restart.is_set()


async def test_no_answer_to_the_create_is_asked_again(
    nc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = chunk_reader._create
    calls: list[int] = []

    async def once_unanswered(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise nats.errors.TimeoutError  # as when the server holding it is failing over
        await real(*args)

    monkeypatch.setattr(chunk_reader, "_create", once_unanswered)
    assert await chunk_reader.read(nc, STREAM, SUBJECT, 3, 30) == [b"m0", b"m1", b"m2"]
    assert len(calls) == 2
