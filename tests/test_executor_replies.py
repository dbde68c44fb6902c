"""What an executor sends back leaves in order through one sender, which a failed send
does not stop, and the agent always hears that a call is done."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from conftest import Lattice
from superpose import protocol
from superpose.lattice.connection import connect
from superpose.node.channel import Channel
from superpose.node.executor.replies import Replies


async def test_a_failed_send_does_not_stop_the_ones_after_it(
    lattice: Lattice, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await connect(lattice.url, name="test-replies")
    await nc.close()  # every publish fails from now on
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    agent_reader, agent_writer = await asyncio.open_unix_connection(sock=theirs)
    answered: list[str] = []
    replies = Replies(
        nc,
        Channel(reader, writer, protocol.decode_from_agent),
        "_SPN.n.d",
        lambda: answered.append("c1"),
    )
    agent = Channel(agent_reader, agent_writer, protocol.decode_from_executor)
    sender = asyncio.create_task(replies.send_forever())
    try:
        with caplog.at_level(logging.ERROR, logger="superpose.executor"):
            replies.printed_line("c1", protocol.log_subject("app", "fn"), b"a line")
            replies.answer(protocol.reply_subject("client", "c1"), protocol.Result("c1", "n"))
            replies.frame(protocol.Start("c2"))
            frames = [await asyncio.wait_for(agent.receive(), 10) for _ in range(2)]
    finally:
        sender.cancel()
        agent.close()
        replies.channel.close()
    assert frames == [protocol.Done("c1", ok=True), protocol.Start("c2")]
    assert answered == ["c1"]
    assert "could not send Publish" in caplog.text and "could not send Answer" in caplog.text
