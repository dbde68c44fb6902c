"""How a client rides out the death of its server (issue 18): a submission lost with it
is tried again after a bounded wait, and once the client has reconnected, what was sent
to it meanwhile (a durable result's notice, a direct call's answer) is looked for at once.

The client reaches the lattice's real nats-server through a relay that cuts its
connection the moment a given message passes, as a server dying at that moment does.
Each test stretches the periodic check it must not rely on, so that it passes only if
the prompt one works.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import durable_fns as dfns
import fns
import superpose as sp
from conftest import Lattice, poll
from superpose import protocol
from superpose.client import durable as client_durable
from superpose.client import session
from superpose.security import lookup

READ_BYTES = 64 * 1024


class Relay:
    """A TCP relay to a nats-server that cuts the connection carrying a message once,
    dropping that message, as a server dying at that moment does."""

    def __init__(self, target_url: str) -> None:
        host, port = target_url.rsplit("/", 1)[1].rsplit(":", 1)
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.marker = b""
        """Cut at the first chunk holding this, either way; b"": relay everything."""
        self.cuts = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        self._cut()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}
        pumps = [self._pump(reader, up_writer), self._pump(up_reader, writer)]
        tasks = {asyncio.ensure_future(p) for p in pumps}
        self._tasks |= tasks
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks -= tasks
        for end in (writer, up_writer):
            end.close()
            self._writers.discard(end)
            await asyncio.gather(end.wait_closed(), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tail = b""
        while chunk := await reader.read(READ_BYTES):
            if self.marker and self.marker in tail + chunk:
                self.marker = b""
                self.cuts += 1
                self._cut()
                return
            tail = chunk[-len(self.marker) :] if self.marker else b""
            writer.write(chunk)
            await writer.drain()

    def _cut(self) -> None:
        for end in list(self._writers):
            end.transport.abort()


@contextmanager
def relayed_client(lattice: Lattice) -> Iterator[tuple[Relay, sp.Client]]:
    """A client whose every byte to and from the lattice passes through a relay; it is
    the session's default client for the block."""
    relay = Relay(lattice.url)
    url = lattice.run(relay.start())
    previous = session.default_client()
    client = sp.connect(url, show_logs=False, creds=lookup.registered(lattice.url))
    try:
        yield relay, client
    finally:
        client.close()
        session.set_default(previous)
        lattice.run(relay.stop())


def test_a_submission_lost_with_its_server_is_sent_again(
    lattice: Lattice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first publish never reaches JetStream, so it is never answered. The next try
    must come before the request's own 10 s timeout: the whole submission gets 9 s."""
    monkeypatch.setattr(client_durable, "ACCEPT_DEADLINE_S", 9.0)
    with relayed_client(lattice) as (relay, _client):
        relay.marker = f"PUB {protocol.WORK_ANY_FILTER[:-1]}".encode()
        future = dfns.counted.spawn(str(tmp_path), "lost-publish")
        assert future.result(timeout=60) == "lost-publish"
        assert relay.cuts == 1
    assert dfns.runs(str(tmp_path), "lost-publish") == 1


def test_a_durable_result_whose_notice_was_lost_is_found_once_reconnected(
    lattice: Lattice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_durable, "SWEEP_EVERY_S", 3600.0)  # only a reconnect sweeps
    with relayed_client(lattice) as (relay, client):
        relay.marker = f"MSG {protocol.durable_notify_subject(client.id)}".encode()
        future = dfns.counted.spawn(str(tmp_path), "lost-notice")
        assert future.result(timeout=60) == "lost-notice"
        assert relay.cuts == 1
    assert dfns.runs(str(tmp_path), "lost-notice") == 1


def test_a_direct_answer_lost_while_reconnecting_is_asked_for_again(
    lattice: Lattice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call's answer is cut off with the connection. Its node is done with it, so no
    node reports it any more: once reconnected the client takes it for lost and, as it
    may be retried, sends it again (the second run finds the first's marker)."""
    monkeypatch.setattr(protocol, "LOST_AFTER_S", 3600.0)  # only the check after a reconnect
    marker = tmp_path / "held"
    with (
        relayed_client(lattice) as (relay, client),
        concurrent.futures.ThreadPoolExecutor(1) as caller,
    ):
        relay.marker = f"MSG {protocol.reply_subject(client.id, '')}".encode()
        call = caller.submit(fns.hold_once.with_options(retries=1).remote, str(marker), 0.2)
        assert call.result(timeout=60) == "retried"
        assert relay.cuts == 1


def test_a_direct_call_without_retries_is_failed_as_lost_once_reconnected(
    lattice: Lattice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "LOST_AFTER_S", 3600.0)
    with relayed_client(lattice) as (relay, client):
        relay.marker = f"MSG {protocol.reply_subject(client.id, '')}".encode()
        with pytest.raises(sp.RemoteError) as info:
            fns.hold_once.remote(str(tmp_path / "once"), 0.2)
        assert relay.cuts == 1
    assert info.value.type == "NodeLost"
    assert "since this client reconnected" in info.value.remote_message
    poll(lambda: (tmp_path / "once").exists(), "the call's one run")
