"""The agent ↔ executor channel: typed frames, batched into one write per loop turn."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from superpose import protocol
from superpose.node.channel import Channel


async def _pair() -> tuple[Channel[Any], Channel[Any], list[int]]:
    """An agent's and an executor's end of one socket pair, and the sizes of the
    executor's writes."""
    ours, theirs = socket.socketpair()
    agent_reader, agent_writer = await asyncio.open_unix_connection(sock=ours)
    reader, writer = await asyncio.open_unix_connection(sock=theirs)
    writes: list[int] = []
    write = writer.write

    def counted(data: Any) -> None:
        writes.append(len(data))
        write(data)

    writer.write = counted  # type: ignore[method-assign]
    agent = Channel(agent_reader, agent_writer, protocol.decode_from_executor)
    executor = Channel(reader, writer, protocol.decode_from_agent)
    return agent, executor, writes


async def test_frames_sent_in_one_loop_turn_leave_in_one_write() -> None:
    agent, executor, writes = await _pair()
    sent = [protocol.Start("a"), protocol.Block("a"), protocol.Done("a", ok=True, result=b"r")]
    for frame in sent:
        executor.send(frame)
    assert writes == []  # not yet: at the end of this loop turn
    await asyncio.sleep(0)
    assert len(writes) == 1
    assert [await agent.receive() for _ in sent] == sent
    executor.send(protocol.Unblock("a"))
    executor.send(protocol.Took(b"inv", "reply"), now=True)  # with what was queued before it
    assert len(writes) == 2
    assert await agent.receive() == protocol.Unblock("a")
    assert await agent.receive() == protocol.Took(b"inv", "reply")
    await asyncio.sleep(0)
    assert len(writes) == 2  # the flush that was scheduled found nothing left
    agent.send(protocol.Quiet())
    assert await executor.receive() == protocol.Quiet()
    executor.close()
    assert await agent.receive() is None  # the peer has gone
    agent.close()
