"""Express subscriptions are narrowed to the executor's own bundle (issue 15, item 2).

An executor's own user is minted while it is neutral and may subscribe to no express
subject; the user its agent mints at ``Load`` (tagged ``bundle:<host key>``) may
subscribe to that bundle's only. Tried from inside a function, sandboxed and not, and
with the minted users themselves; the bundle's own warm calls still go express."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from nats.aio.client import RawCredentials

import express_scope_fns as fns
import superpose as sp
from conftest import Lattice, client_on, start_lattice, stop_lattice
from superpose import protocol
from superpose.lattice.connection import connect
from superpose.node.executor.app_user import AppConnection
from superpose.node.executor.express import ExpressCalls
from superpose.security import nkeys
from superpose.security.executor_identity import ExecutorSigner, signer_beside
from superpose.security.lookup import find_creds
from superpose.security.nkeys import KeyKind
from test_express import express_grew, learn, node_now

OTHER = "0" * 64


@pytest.fixture(scope="module", params=["none", "user"])
def one_node(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Lattice]:
    """One node, its executors forked (``none``) or sandboxed as a user of their own."""
    handle = start_lattice(
        tmp_path_factory.mktemp("express-scope"),
        workers=1,
        gateway=False,
        env={"SUPERPOSE_SANDBOX": request.param},
    )
    yield handle
    stop_lattice(handle)


@pytest.fixture
def scope_client(one_node: Lattice) -> Iterator[sp.Client]:
    with client_on(one_node) as client:
        yield client


def signer_of(handle: Lattice) -> ExecutorSigner:
    signer = signer_beside(next(handle.state_dir.rglob("node.creds")))
    assert signer is not None
    return signer


def test_a_function_cannot_listen_to_express_calls(scope_client: sp.Client) -> None:
    """Not another bundle's, not every app's, and not even its own bundle's with the
    user it can read (its own calls come on the connection its agent gave it)."""
    subjects = [
        protocol.express_wildcard(OTHER),
        protocol.express_subject("*", "otherapp", ">"),
        "sp.exec.>",
        "own",
    ]
    assert fns.snoop.remote(subjects) == dict.fromkeys(subjects, "denied")


def test_its_own_warm_calls_still_go_express(scope_client: sp.Client) -> None:
    learn(scope_client, lambda: fns.square.remote(1))
    before = node_now(scope_client)
    assert [fns.square.remote(i) for i in range(10)] == [i * i for i in range(10)]
    assert express_grew(scope_client, before, 10) == 10


def test_the_express_user_may_take_its_own_bundles_calls_only(one_node: Lattice) -> None:
    """The user minted at Load, tagged with its host key: its express subject (in the
    queue group), nothing wider; the neutral user, none."""
    signer = signer_of(one_node)
    host = "ab" * 32
    mine = protocol.express_wildcard(host)
    tried = [mine, protocol.express_wildcard(OTHER), "sp.exec.>"]
    tagged = one_node.run(subscriptions(one_node.url, signer.mint_app("e" * 16, host, "a"), tried))
    assert tagged == {mine: "ok", protocol.express_wildcard(OTHER): "denied", "sp.exec.>": "denied"}
    neutral = one_node.run(subscriptions(one_node.url, signer.mint("e" * 16), tried))
    assert neutral == dict.fromkeys(tried, "denied")


async def subscriptions(url: str, creds: str, subjects: list[str]) -> dict[str, str]:
    """Subscribe to each in the express queue group: 'denied' if the server says so."""
    refused: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        await refused.put(str(exc))

    nc = await nats.connect(url, user_credentials=RawCredentials(creds), error_cb=on_error)
    said: dict[str, str] = {}
    try:
        for subject in subjects:
            await nc.subscribe(subject, queue=protocol.EXPRESS_QUEUE_GROUP)
            await nc.flush()
            # A refusal arrives before the answer to a ping sent after it.
            await nc.flush()
            said[subject] = "ok"
            while not refused.empty():
                if subject.lower() in (await refused.get()):
                    said[subject] = "denied"
    finally:
        await nc.close()
    return said


def test_an_express_user_the_server_refuses_leaves_calls_to_the_agent(
    one_node: Lattice, caplog: pytest.LogCaptureFixture
) -> None:
    """Creds the server refuses (another account's): the executor says why and takes no
    express calls; nothing is raised into its load."""
    stranger = ExecutorSigner(nkeys.new_seed(KeyKind.ACCOUNT), signer_of(one_node).account)

    async def attempt() -> ExpressCalls:
        nc = await connect(one_node.url, name="express-scope-test", creds=find_creds(one_node.url))
        app = AppConnection(
            lambda creds: connect(one_node.url, name="express-scope-own", creds_text=creds)
        )
        app.open(stranger.mint_app("e" * 16, "ab" * 32, "someapp"))
        express = ExpressCalls(
            nc,
            None,  # type: ignore[arg-type]  # no call arrives: the channel is never used
            lambda: True,
            lambda inv, reply: None,
            app,
        )
        await express.open("ab" * 32)
        assert express._opening is not None
        await express._opening
        await express.quiet()
        await app.close()
        await nc.close()
        return express

    with caplog.at_level("WARNING", logger="superpose.executor"):
        express = one_node.run(attempt())
    assert express._subscription is None
    assert "taking no express calls of " + "ab" * 32 in caplog.text
    assert "refused the connection" in caplog.text
