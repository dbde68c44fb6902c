"""An executor's app user: its app's dicts, queues and cache entries, no other app's
(issue 15 item 2 meets issue 16's shared state).

The user an agent mints at ``Load`` is tagged ``app:<app>``; the template pins the app's
dict and queue scopes and cache keys to that tag, and the neutral user has none of any
app's. Tried from inside a function of app ``app_user_fns`` (its two connections raw,
and the API), and with users minted here from the lattice's signer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import pytest
from nats.aio.client import RawCredentials

import app_user_fns as fns
import superpose as sp
from conftest import Lattice, client_on, start_lattice, stop_lattice
from durable_fns import runs
from superpose import protocol, runtime
from superpose.client import app_state
from superpose.errors import LatticeError, PermissionDeniedError
from superpose.node.executor.app_user import AppConnection
from test_cli import unique
from test_express_scope import signer_of
from test_memo import deploy_counter

APP = "app_user_fns"
OTHER = "someone_else"


def _name() -> str:
    return f"au{uuid.uuid4().hex[:8]}"


def test_own_state_works_and_another_apps_is_refused_by_name(client: sp.Client) -> None:
    name = _name()
    said = fns.through_the_api.remote(name, OTHER)
    assert said["has app user"] is True
    assert said["incr"] == 1 and said["queue"] == {"job": 1} and said["shared"] == 1
    for what in ("dict read", "dict write", "queue put", "queue get"):
        assert said[what].startswith(f"{'Dict' if 'dict' in what else 'Queue'} {name!r}"), what
        assert f"a function of app {APP!r}" in said[what], what
        assert f"not those of app {OTHER!r}" in said[what], what
    assert sp.Dict(name, app=APP)["n"] == 1  # the caller sees what the function wrote


def test_the_server_refuses_another_apps_state_to_both_executor_users(client: sp.Client) -> None:
    said = fns.raw.remote(OTHER)
    app_user, neutral = said["app user"], said["neutral user"]
    for what in ("dict write", "dict read", "queue put", "queue consumer", "memo write"):
        assert app_user[f"{APP} {what}"] == "answered", what
        assert app_user[f"{OTHER} {what}"] == "denied", what
        assert neutral[f"{APP} {what}"] == neutral[f"{OTHER} {what}"] == "denied", what
    # a direct get of a key never written is answered (404) when allowed
    assert app_user[f"{APP} memo read"] == app_user[f"{APP} dict read"] == "answered"
    assert app_user[f"{OTHER} memo read"] == app_user[f"{OTHER} dict read"] == "denied"
    assert neutral[f"{APP} memo read"] == neutral[f"{APP} dict read"] == "denied"
    assert app_user["shared dict write"] == neutral["shared dict write"] == "answered"
    assert app_user["memo batch read"] == neutral["memo batch read"] == "denied"


def test_a_cached_call_of_another_apps_function_runs_uncached(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    app = unique("memo")
    d = str(tmp_path)
    deploy_counter(lattice, tmp_path / app, 2)  # cache=True recorded at deploy
    assert fns.cached_across_apps.remote(f"{app}.double", d, 3) == [6, 6, False, False]
    assert runs(d, "double") == 2
    assert client.function(f"{app}.double").remote(d, 3) == 6  # its own callers cache it
    assert client.function(f"{app}.double").remote(d, 3) == 6
    assert runs(d, "double") == 3


@pytest.mark.parametrize("app", ["MixedCase-app", "shop"])
def test_an_app_user_is_pinned_to_its_app_case_and_all(lattice: Lattice, app: str) -> None:
    """The tag's value keeps its case on the server (probed: ``app:MixedCase`` grants
    ``MixedCase``, not ``mixedcase``); app names are subject tokens as they are."""
    signer = signer_of(lattice)
    scope = protocol.app_scope(app)
    mine = [
        protocol.kv_subject(protocol.DICTS_BUCKET, f"{scope}.d.k"),
        protocol.kv_subject(protocol.MEMO_BUCKET, f"{app}.fn.x"),
        protocol.queue_subject(True, scope, "q"),
    ]
    others = [
        protocol.kv_subject(protocol.DICTS_BUCKET, f"{protocol.app_scope(app.lower())}X.d.k"),
        protocol.kv_subject(protocol.DICTS_BUCKET, f"{protocol.app_scope(OTHER)}.d.k"),
        protocol.kv_subject(protocol.MEMO_BUCKET, f"{OTHER}.fn.x"),
        protocol.queue_subject(False, protocol.app_scope(OTHER), "q"),
    ]
    if app != app.lower():
        others.append(protocol.kv_subject(protocol.DICTS_BUCKET, f"app.{app.lower()}.d.k"))
    app_user = signer.mint_app("e" * 16, "ab" * 32, app)
    said = lattice.run(publishes(lattice.url, app_user, mine + others))
    assert said == {**dict.fromkeys(mine, "ok"), **dict.fromkeys(others, "denied")}
    neutral = lattice.run(publishes(lattice.url, signer.mint("e" * 16), mine))
    assert neutral == dict.fromkeys(mine, "denied")


async def publishes(url: str, creds: str, subjects: list[str]) -> dict[str, str]:
    """Publish on each: 'denied' if the server says so before a ping's answer."""
    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        refused.append(str(exc))

    nc = await nats.connect(url, user_credentials=RawCredentials(creds), error_cb=on_error)
    said: dict[str, str] = {}
    try:
        for subject in subjects:
            await nc.publish(subject, b"")
            await nc.flush()
            await nc.flush()  # a refusal arrives before the answer to a ping sent after it
            said[subject] = "denied" if any(subject.lower() in r for r in refused) else "ok"
    finally:
        await nc.close()
    return said


def test_other_apps_cached_calls_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """The fallback's message (the executor's log line), said once per function."""
    from superpose.client import memo
    from superpose.registry.mirror import Target

    target = Target.__new__(Target)
    object.__setattr__(target, "app", OTHER)
    object.__setattr__(target, "fn", "f")
    with caplog.at_level(logging.INFO, logger="superpose.memo"):
        memo._uncached_once(target, APP)
        memo._uncached_once(target, APP)
    said = [r.getMessage() for r in caplog.records if "runs uncached" in r.getMessage()]
    assert said == [
        f"{OTHER}.f runs uncached from app {APP}: a function may use only its own app's cache"
    ]


def test_two_apps_of_one_bundle_run_in_executors_of_their_own(client: sp.Client) -> None:
    """Script mode ships the folder as one bundle: each app's calls go to an executor
    loaded for that app (whose app user may touch that app's state), never the other's."""
    import app_user_other_fns as other

    for _ in range(3):  # warm: the second and third may go express
        mine, theirs = fns.hosted.remote(), other.hosted.remote()
        assert mine[:2] == [APP, APP]
        assert theirs[:2] == ["app_user_other_fns"] * 2
        assert mine[2] != theirs[2]


async def test_an_app_connection_that_failed_says_why() -> None:
    async def refused(creds: str) -> Any:
        raise OSError(f"nats: 'Authorization Violation' for {creds}")

    app = AppConnection(refused)
    assert app.open("") is False and not app.opened  # no creds: no app user
    with pytest.raises(LatticeError, match="has no app user"):
        await app.get()
    assert app.open("the creds") is True
    with pytest.raises(LatticeError, match=r"app user could not connect: .*Authorization"):
        await app.get()
    await app.close()
    assert not app.opened


async def test_which_connection_each_scope_goes_over() -> None:
    """Outside a function, or in an executor without an app user (no signer), every
    scope goes over the client's connection, as before; with one, the app's own over
    the app user's, shared ones over the client's, another app's nowhere."""
    client: Any = SimpleNamespace(nc="client's")

    async def opened() -> Any:
        return "app user's"

    def hosting(app_connection: Any) -> runtime.NodeRuntime:
        return runtime.NodeRuntime("n", "a", "d", print, print, app_connection=app_connection)

    def over(scope: str) -> Any:
        return app_state.connection_for(client, scope, "Dict 'x'")

    previous = runtime.current()
    try:
        assert await over("app.other") == "client's"  # not in an executor
        runtime.install(hosting(None))
        assert await over("app.other") == "client's"  # an executor without an app user
        runtime.install(hosting(opened))
        assert await over("app.a") == "app user's"
        assert await over("shared") == "client's"
        with pytest.raises(PermissionDeniedError) as refused:
            await over("app.other")
        assert str(refused.value).startswith("Dict 'x': a function of app 'a' may use")
        assert "not those of app 'other'" in str(refused.value)
    finally:
        runtime._runtime = previous


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    """One node whose executors run sandboxed, as a user of their own: the app user's
    creds reach them over the socketpair all the same."""
    handle = start_lattice(
        tmp_path_factory.mktemp("app-user"),
        workers=1,
        gateway=False,
        env={"SUPERPOSE_SANDBOX": "user"},
    )
    yield handle
    stop_lattice(handle)


def test_a_sandboxed_executor_is_pinned_to_its_app_too(sandboxed: Lattice) -> None:
    with client_on(sandboxed):
        said = fns.through_the_api.remote(_name(), OTHER)
        assert said["has app user"] is True and said["incr"] == 1
        assert f"not those of app {OTHER!r}" in said["dict write"]
        raw = fns.raw.remote(OTHER)
    assert raw["app user"][f"{APP} dict write"] == "answered"
    assert raw["app user"][f"{OTHER} dict write"] == "denied"
    assert raw["neutral user"][f"{APP} dict write"] == "denied"
