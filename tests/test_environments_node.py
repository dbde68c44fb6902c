"""Environments on nodes: built once, pulled by the other node, reused warm, kept apart,
evicted by size, failing builds recorded, unfit nodes refusing, and user pins that
cannot break the executor. Real uv, a real lattice, a wheelhouse the tests build.

The calls carry ``Invocation.env`` themselves (``call_with_env``): what deploy and
script mode set is tested where they set it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import env_fns
import superpose as sp
import wheelhouse
from conftest import Lattice, client_on, poll, start_lattice, stop_lattice
from superpose import protocol
from superpose.client.options import Options
from superpose.code import environments
from superpose.lattice import payload

CALL_TIMEOUT_S = 90.0
_ids = itertools.count()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheelhouse, plus what these tests need: a package whose build fails, fake
    protocol packages that must never be imported, and two ~700 KB packages."""
    folder = wheelhouse.build(tmp_path_factory.mktemp("wheels"))
    wheelhouse.failing_sdist(folder, "brokenpkg", "1.0", "brokenpkg.c:1: error: no missing.h")
    for name in ("msgspec", "cloudpickle"):
        broken = f'raise ImportError("the user\'s pinned {name} was imported")\n'
        wheelhouse.wheel(folder, name, "0.0.1", {f"{name}/__init__.py": broken})
    for version in ("1.0", "2.0"):
        files = {"tinybig/__init__.py": "", "tinybig/data.txt": secrets.token_hex(350_000)}
        wheelhouse.wheel(folder, "tinybig", version, files)
    with pytest.MonkeyPatch.context() as patch:  # node processes inherit them
        patch.setenv("UV_FIND_LINKS", str(folder))
        patch.setenv("UV_NO_INDEX", "1")
        patch.setenv("UV_CACHE_DIR", str(tmp_path_factory.mktemp("uv-cache")))
        yield folder


@pytest.fixture(scope="module")
def envs_lattice(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    handle = start_lattice(tmp_path_factory.mktemp("envs-lattice"), gateway=False)
    yield handle
    stop_lattice(handle)


@pytest.fixture(scope="module")
def client(envs_lattice: Lattice) -> Iterator[sp.Client]:
    with client_on(envs_lattice) as c:
        yield c


@pytest.fixture(scope="module")
def node_ids(client: sp.Client) -> list[str]:
    return sorted(n.id for n in live_nodes(client))


# --- helpers ------------------------------------------------------------------------------


def live_nodes(client: sp.Client) -> list[protocol.NodeInfo]:
    return client.run(client.nodes()).live()  # type: ignore[no-any-return]


def node_info(client: sp.Client, node_id: str) -> protocol.NodeInfo:
    return next(n for n in live_nodes(client) if n.id == node_id)


def registered(client: sp.Client, declared: list[str], platform: str = "") -> protocol.Environment:
    """An environment resolved for this machine (or ``platform``) and recorded."""
    python = environments.this_python()
    env = environments.resolve(declared, python, platform or environments.this_platform())
    client.run(client.assets.registry.put(protocol.env_key(env.digest), env.as_json()))
    return env


class Heard:
    """What nodes told a caller on its log subject."""

    def __init__(self) -> None:
        self.subject = f"_INBOX.envtest.{secrets.token_hex(6)}"
        self.lines: list[str] = []

    async def on_record(self, msg: Any) -> None:
        self.lines.append(protocol.LogRecord.decode(msg.data).line)


def call_with_env(
    client: sp.Client,
    function: Any,
    env: str,
    *,
    node: str | None = None,
    heard: Heard | None = None,
) -> protocol.Result:
    """Run ``function()`` with environment ``env`` (on ``node``, else wherever the queue
    group sends it); its ``Result``. ``heard`` collects what the caller was told."""
    target = function._target(client)
    inv = protocol.Invocation(
        id=f"envtest{next(_ids)}",
        app=target.app,
        fn=target.fn,
        digest=target.digest,
        module=target.module,
        qualname=target.qualname,
        args=protocol.Payload(
            protocol.CODEC_PICKLE, payload.encode_args((), {}, protocol.CODEC_PICKLE)
        ),
        deadline=time.time() + CALL_TIMEOUT_S,
        env=env,
        ctx=protocol.CallContext(log_to=heard.subject if heard else None),
    )
    if node:
        subject = protocol.node_call_subject(node, target.app, target.fn)
    else:
        subject = protocol.call_subject(target.app, target.fn)

    async def request() -> protocol.Result:
        sub = await client.nc.subscribe(heard.subject, cb=heard.on_record) if heard else None
        try:
            reply = await client.nc.request(subject, inv.encode(), timeout=CALL_TIMEOUT_S)
            await client.nc.flush()
            return protocol.Result.decode(reply.data)
        finally:
            if sub is not None:
                await asyncio.sleep(0)  # let lines already received be filed
                await sub.unsubscribe()

    return client.run(request())


def value_of(result: protocol.Result) -> Any:
    assert result.error is None, f"{result.error.type}: {result.error.message}"
    assert result.value is not None and result.value.data is not None
    return payload.decode_value(result.value.data, result.value.codec)


def node_log(handle: Lattice, node_id: str) -> str:
    return (handle.state_dir / "logs" / f"node-{node_id}.log").read_text(errors="replace")


def where(function: Any, client: sp.Client) -> str:
    target = function._target(client)
    return f"{target.app}@{target.digest[:6]}"


# --- built once, pulled everywhere, warm after ----------------------------------------------


def test_first_call_builds_the_other_node_pulls_and_warm_calls_reuse(
    client: sp.Client, envs_lattice: Lattice, node_ids: list[str]
) -> None:
    env = registered(client, ["tinytwo==2.0"])
    first, second = node_ids
    short = env.digest[:12]

    building = Heard()
    assert (
        value_of(
            call_with_env(client, env_fns.tiny_version, env.digest, node=first, heard=building)
        )
        == "2.0"
    )
    assert (
        f"building environment for {where(env_fns.tiny_version, client)}: tinyone 2.0, tinytwo 2.0"
        in building.lines
    )
    assert f"environment {short} built" in node_log(envs_lattice, first)

    pulling = Heard()
    assert (
        value_of(
            call_with_env(client, env_fns.tiny_version, env.digest, node=second, heard=pulling)
        )
        == "2.0"
    )
    assert any(
        line.startswith("pulling environment for") and line.endswith("KB)")
        for line in pulling.lines
    )
    log = node_log(envs_lattice, second)
    assert f"environment {short} pulled" in log and f"environment {short} built" not in log

    warm = Heard()
    assert (
        value_of(call_with_env(client, env_fns.tiny_version, env.digest, node=first, heard=warm))
        == "2.0"
    )
    assert not warm.lines
    for node_id in node_ids:  # each says what it holds, and what it builds for
        info = poll(
            lambda n=node_id: (i := node_info(client, n)) and env.digest in i.envs and i,
            f"node {node_id} to report environment {short}",
        )
        assert (info.python, info.platform) == (env.python, env.platform)
        assert (
            protocol.host_key(env_fns.tiny_version._target(client).digest, env.digest) in info.warm
        )


def test_two_environments_run_side_by_side_on_one_node(
    client: sp.Client, node_ids: list[str]
) -> None:
    old = registered(client, ["tinyone==1.0"])
    new = registered(client, ["tinyone==2.0"])
    node = node_ids[0]
    for env, version in ((old, "1.0"), (new, "2.0"), (old, "1.0"), (new, "2.0")):
        assert (
            value_of(call_with_env(client, env_fns.tiny_version, env.digest, node=node)) == version
        )
    digest = env_fns.tiny_version._target(client).digest
    both = {protocol.host_key(digest, old.digest), protocol.host_key(digest, new.digest)}
    poll(lambda: both <= set(node_info(client, node).warm), "both hosts in the warm set")


def test_user_pins_of_the_executors_own_packages_cannot_break_it(
    client: sp.Client, envs_lattice: Lattice, node_ids: list[str]
) -> None:
    """The environment pins a msgspec and a cloudpickle whose import raises: the executor's
    own stay in use (the call runs and answers), and the shadowing is logged."""
    env = registered(client, ["tinyone==1.0", "msgspec==0.0.1", "cloudpickle==0.0.1"])
    assert env.packages["msgspec"] == "0.0.1"
    found = value_of(call_with_env(client, env_fns.protocol_modules, env.digest, node=node_ids[1]))
    assert found["tinyone"] == "1.0"
    for name in ("msgspec", "cloudpickle"):
        assert env.digest not in found[name], f"the user's {name} was imported"
    executors_log = envs_lattice.state_dir / "nodes" / node_ids[1] / "executors.log"
    assert (
        "pins cloudpickle, msgspec, which this executor had imported" in executors_log.read_text()
    )


def test_first_calls_on_both_nodes_at_once_build_it_once(
    client: sp.Client, envs_lattice: Lattice, node_ids: list[str]
) -> None:
    env = registered(client, ["tinytwo==1.0", "tinyone==1.0"])
    with ThreadPoolExecutor(2) as pool:
        calls = [
            pool.submit(call_with_env, client, env_fns.tiny_version, env.digest, node=node)
            for node in node_ids
        ]
        assert [value_of(call.result()) for call in calls] == ["1.0", "1.0"]
    logs = "".join(node_log(envs_lattice, node) for node in node_ids)
    assert logs.count(f"environment {env.digest[:12]} built") == 1
    assert logs.count(f"environment {env.digest[:12]} pulled") == 1


def test_a_node_waits_for_the_builder_and_takes_over_when_its_lease_ends(
    client: sp.Client, envs_lattice: Lattice, node_ids: list[str]
) -> None:
    """Another node holds the build lease: the caller hears whom it waits for. The lease
    goes (its builder gave up): the waiting node builds it itself."""
    env = registered(client, ["tinytwo==2.0", "tinyone==2.0", "cloudpickle==0.0.1"])
    lease = protocol.EnvBuild(node="nbusy", started=time.time())
    key = protocol.env_build_key(env.digest)
    client.run(client.assets.registry.put(key, lease.as_json()))
    heard = Heard()
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(
            call_with_env, client, env_fns.tiny_version, env.digest, node=node_ids[0], heard=heard
        )
        poll(
            lambda: any(line.startswith("waiting for node nbusy to build") for line in heard.lines),
            "the caller to hear whom it waits for",
        )
        client.run(client.assets.registry.purge(key))
        assert value_of(call.result()) == "2.0"
    assert f"environment {env.digest[:12]} built" in node_log(envs_lattice, node_ids[0])


def test_a_dead_builders_lease_is_taken_over(
    client: sp.Client, envs_lattice: Lattice, node_ids: list[str]
) -> None:
    env = registered(client, ["tinyone==1.0", "cloudpickle==0.0.1"])
    stale = protocol.EnvBuild(node="ngone", started=time.time() - protocol.ENV_BUILD_LEASE_S - 1)
    client.run(client.assets.registry.put(protocol.env_build_key(env.digest), stale.as_json()))
    assert (
        value_of(call_with_env(client, env_fns.tiny_version, env.digest, node=node_ids[1])) == "1.0"
    )
    log = node_log(envs_lattice, node_ids[1])
    assert f"took over the build of environment {env.digest[:12]} from node ngone" in log


# --- bad input: builds that fail, environments nobody can host ------------------------------


def test_a_failing_build_is_reported_recorded_and_never_retried(
    client: sp.Client, envs_lattice: Lattice, node_ids: list[str]
) -> None:
    env = registered(client, ["brokenpkg==1.0", "tinyone==2.0"])
    first, second = node_ids
    failed = call_with_env(client, env_fns.tiny_version, env.digest, node=first).error
    assert failed is not None and failed.kind == protocol.ERR_PREPARE
    assert f"its build failed on node {first}" in failed.message
    assert "brokenpkg 1.0" in failed.message and "no missing.h" in failed.traceback
    entry = client.run(client.assets.registry.get(protocol.env_failure_key(env.digest)))
    recorded = protocol.EnvFailure.from_json(entry.value)
    assert recorded.node == first and "no missing.h" in recorded.reason

    for node in (second, first):  # at once, from the record: no node builds it again
        again = call_with_env(client, env_fns.tiny_version, env.digest, node=node).error
        assert again is not None and again.kind == protocol.ERR_PREPARE
        assert f"its build failed on node {first}" in again.message
        assert "no missing.h" in again.traceback
    attempts = [
        node_log(envs_lattice, n).count(f"environment {env.digest[:12]} failed") for n in node_ids
    ]
    assert attempts == [1, 0]


def test_an_environment_for_another_platform_fails_fast_naming_it(client: sp.Client) -> None:
    env = registered(client, ["tinyone==2.0"], platform="aarch64-apple-darwin")
    error = call_with_env(client, env_fns.tiny_version, env.digest).error
    assert error is not None and error.kind == protocol.ERR_PREPARE
    assert error.type == "EnvironmentUnfit"
    assert "aarch64-apple-darwin" in error.message and "tinyone 2.0" in error.message
    assert f"Python {env.python}" in error.message and "no live node can host it" in error.message


def test_durable_work_with_an_environment_no_node_can_host_fails_fast_naming_it(
    client: sp.Client,
) -> None:
    """Queued work is pulled by whichever node asks: it carries the environment's Python
    and platform as needs, so only a node that can host it takes it, and with none
    alive it fails before it leaves."""
    env = registered(client, ["tinyone==2.0"], platform="aarch64-apple-darwin")
    poll(lambda: client.run(client.registry()).environments.get(env.digest), "the record")
    target = dataclasses.replace(env_fns.tiny_version._target(client), env=env.digest)
    future = client.submit(target, (), {}, Options(), durable=True)
    with pytest.raises(sp.NoNodesError) as caught:
        future.result(timeout=30)
    assert "aarch64-apple-darwin" in str(caught.value)
    fits = registered(client, ["tinyone==2.0"])  # this machine's: queued work runs
    poll(lambda: client.run(client.registry()).environments.get(fits.digest), "the record")
    target = dataclasses.replace(target, env=fits.digest)
    assert client.submit(target, (), {}, Options(), durable=True).result(timeout=120) == "2.0"


def test_an_environment_nobody_recorded_is_named(client: sp.Client) -> None:
    error = call_with_env(client, env_fns.tiny_version, "f" * 64).error
    assert error is not None and error.kind == protocol.ERR_PREPARE
    assert "environment ffffffffffff" in error.message and "not registered" in error.message


def test_a_node_that_cannot_host_it_sends_the_call_to_one_that_can(client: sp.Client) -> None:
    """A node of the environment's platform joins (a fake entry: this machine has one
    platform); the queue group's node sends the call there instead of failing it."""
    env = registered(client, ["tinyone==1.0"], platform="aarch64-apple-darwin")
    target = env_fns.tiny_version._target(client)
    fake = protocol.NodeInfo(
        id="nmac",
        host="elsewhere",
        pid=1,
        labels={},
        slots=1,
        seen=time.time() + 60,
        python=env.python,
        platform=env.platform,
    )

    async def forwarded() -> protocol.Invocation:
        arrived: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_call(msg: Any) -> None:
            if not arrived.done():
                arrived.set_result(msg.data)

        sub = await client.nc.subscribe(
            protocol.node_call_subject("nmac", target.app, target.fn), cb=on_call
        )
        await client.assets.nodes.put("nmac", fake.encode())
        try:
            directory = await client.nodes()
            while "nmac" not in {n.id for n in directory.live()}:
                await asyncio.sleep(0.05)
            inv = protocol.Invocation(
                id=f"envtest{next(_ids)}",
                app=target.app,
                fn=target.fn,
                digest=target.digest,
                module=target.module,
                qualname=target.qualname,
                args=protocol.Payload(protocol.CODEC_PICKLE, b""),
                deadline=time.time() + CALL_TIMEOUT_S,
                env=env.digest,
            )
            await client.nc.publish(protocol.call_subject(target.app, target.fn), inv.encode())
            return protocol.Invocation.decode(await asyncio.wait_for(arrived, 30))
        finally:
            await sub.unsubscribe()
            await client.assets.nodes.delete("nmac")

    assert client.run(forwarded()).env == env.digest


# --- the cache: least recently used out, by size ----------------------------------------


@pytest.fixture(scope="module")
def tiny_cache_lattice(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    """One node, one warm executor, a 1 MB environment cache: two ~700 KB environments
    do not fit together."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SUPERPOSE_ENV_CACHE_MB", "1")
        patch.setenv("SUPERPOSE_MAX_EXECUTORS", "1")
        handle = start_lattice(tmp_path_factory.mktemp("tiny-cache"), workers=1, gateway=False)
    yield handle
    stop_lattice(handle)


def test_the_least_recently_used_environment_goes_when_the_cache_is_full(
    tiny_cache_lattice: Lattice,
) -> None:
    with client_on(tiny_cache_lattice) as client:
        (node,) = [n.id for n in live_nodes(client)]
        old = registered(client, ["tinybig==1.0", "tinyone==1.0"])
        new = registered(client, ["tinybig==2.0", "tinyone==2.0"])
        assert value_of(call_with_env(client, env_fns.tiny_version, old.digest)) == "1.0"
        assert value_of(call_with_env(client, env_fns.tiny_version, new.digest)) == "2.0"
        poll(lambda: node_info(client, node).envs == [new.digest], "the old environment to go")
        cache = tiny_cache_lattice.state_dir / "nodes" / node / "envs"
        assert not (cache / old.digest).exists() and (cache / new.digest).exists()
        assert f"evicted environment {old.digest[:12]}" in node_log(tiny_cache_lattice, node)
        # Needed again: pulled from the lattice, not built a second time.
        assert value_of(call_with_env(client, env_fns.tiny_version, old.digest)) == "1.0"
        log = node_log(tiny_cache_lattice, node)
        assert log.count(f"environment {old.digest[:12]} built") == 1
        assert f"environment {old.digest[:12]} pulled" in log
