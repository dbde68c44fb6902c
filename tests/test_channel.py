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


async def test_a_lazy_frame_leaves_with_the_next_one_or_alone_a_moment_later() -> None:
    """An express call's Done waits for company (the next call's Took) so that each
    call wakes the agent once; alone, it leaves ``LAZY_S`` later, never lost."""
    agent, executor, writes = await _pair()
    executor.send(protocol.Done("a", ok=True), lazy=True)
    await asyncio.sleep(0)
    assert writes == []  # not at the end of this loop turn
    executor.send(protocol.Took(b"inv", "reply"), now=True)  # takes it along, first
    assert len(writes) == 1
    assert await agent.receive() == protocol.Done("a", ok=True)
    assert await agent.receive() == protocol.Took(b"inv", "reply")
    executor.send(protocol.Done("b", ok=True), lazy=True)
    executor.send(protocol.Start("c"))  # an ordinary frame: both at the end of this turn
    await asyncio.sleep(0)
    assert len(writes) == 2
    assert await agent.receive() == protocol.Done("b", ok=True)
    executor.send(protocol.Done("d", ok=True), lazy=True)  # alone: a moment later
    assert await agent.receive() == protocol.Start("c")
    assert await asyncio.wait_for(agent.receive(), 1) == protocol.Done("d", ok=True)
    assert len(writes) == 3
    executor.close()
    agent.close()
