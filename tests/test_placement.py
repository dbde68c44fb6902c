"""Placement by need, pinning and warm affinity, on a real lattice with a labelled node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import superpose as sp
from conftest import (
    Lattice,
    client_on,
    lattice_env,
    poll,
    start_lattice,
    stop_lattice,
    superpose_cli,
)
from superpose import protocol
from test_cli import deploy, unique, write_app

WHERE = """
import superpose as sp
from superpose import protocol
from superpose import runtime


@sp.function
def where() -> str:
    return runtime.current().node_id


@sp.function(needs={"gpu": "1"})
def on_gpu() -> str:
    return runtime.current().node_id


@sp.function(region="mars")
def on_mars() -> str:
    return runtime.current().node_id
"""


def start_worker(url: str, labels: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    env.update(lattice_env(url))
    return subprocess.Popen(
        [sys.executable, "-m", "superpose", "worker", "--lattice", url, "--labels", labels,
         "--slots", "1", "--drain-grace", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip


def stop_worker(worker: subprocess.Popen[str]) -> None:
    worker.terminate()
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def status(lattice: Lattice) -> dict:  # type: ignore[type-arg]
    proc = superpose_cli("status", "--json", url=lattice.url, check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def node_with(lattice: Lattice, **labels: str) -> str:
    def find() -> str | None:
        for node in status(lattice)["nodes"]:
            if node["labels"] == labels:
                return str(node["id"])
        return None

    return str(poll(find, f"a node labelled {labels}"))


@pytest.fixture(scope="module")
def placed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lattice, str, str]]:
    """Two plain nodes and one labelled gpu=1, region=eu; an app reporting its node."""
    handle = start_lattice(tmp_path_factory.mktemp("placement"), workers=2, gateway=False)
    worker = start_worker(handle.url, "gpu=1,region=eu")
    try:
        gpu = node_with(handle, gpu="1", region="eu")
        folder = write_app(tmp_path_factory.mktemp("apps") / unique("where"), {"app.py": WHERE})
        deploy(handle, folder)
        yield handle, folder.name, gpu
    finally:
        stop_worker(worker)
        stop_lattice(handle)


def test_calls_with_needs_run_only_on_nodes_that_meet_them(
    placed: tuple[Lattice, str, str],
) -> None:
    handle, app, gpu = placed
    with client_on(handle) as client:
        declared = client.function(f"{app}.on_gpu")
        assert {declared.remote() for _ in range(10)} == {gpu}
        assert {f.result(timeout=60) for f in [declared.spawn() for _ in range(10)]} == {gpu}
        at_call = client.function(f"{app}.where").options(needs={"region": "eu"})
        assert {at_call.remote() for _ in range(10)} == {gpu}
        # durable calls without needs are pulled by any node (direct ones stick to
        # the node holding the bundle warm: warm affinity)
        anywhere = client.function(f"{app}.where")
        assert len({f.result(timeout=60) for f in [anywhere.spawn() for _ in range(60)]}) >= 2


def test_an_unmet_need_fails_at_once_naming_it(placed: tuple[Lattice, str, str]) -> None:
    handle, app, _ = placed
    with client_on(handle) as client:
        started = time.monotonic()
        with pytest.raises(sp.NoNodesError, match=r"no live node has region=mars"):
            client.function(f"{app}.on_mars").remote()
        with pytest.raises(sp.NoNodesError, match=r"gpu=2"):
            client.function(f"{app}.where").options(needs={"gpu": "2"}).spawn().result(timeout=30)
        plain = next(n["id"] for n in status(handle)["nodes"] if not n["labels"])
        both = {"region": "eu", "node": plain}  # each is met somewhere, never on one node
        with pytest.raises(sp.NoNodesError, match=rf"node={plain},region=eu \(together\)"):
            client.function(f"{app}.where").options(needs=both).remote()
        assert time.monotonic() - started < 10  # failed fast: no call waited for a timeout
    proc = superpose_cli("call", f"{app}.on_mars", url=handle.url)
    assert proc.returncode == 1 and "region=mars" in proc.stderr


def test_bad_needs_are_refused(placed: tuple[Lattice, str, str]) -> None:
    handle, app, _ = placed
    with client_on(handle) as client:
        where = client.function(f"{app}.where")
        with pytest.raises(sp.SuperposeError, match="mapping of label"):
            where.options(needs=["gpu"])
        with pytest.raises(sp.SuperposeError, match="wait_for_node"):
            where.options(wait_for_node=-1)
        with pytest.raises(sp.SuperposeError, match="label gpu must be a string"):
            where.options(needs={"gpu": None})
        with pytest.raises(sp.SuperposeError, match="label name 'a b'"):
            where.options(needs={"a b": "1"})
        with pytest.raises(sp.SuperposeError, match="region must be a label value"):
            where.options(region="eu west")


def test_wait_for_node_waits_for_a_node_that_joins(
    placed: tuple[Lattice, str, str], tmp_path: Path
) -> None:
    handle, app, _ = placed
    with client_on(handle) as client:
        started = time.monotonic()
        with pytest.raises(sp.NoNodesError, match="after waiting 1 s"):
            client.function(f"{app}.on_mars").options(wait_for_node=1.0).remote()
        assert time.monotonic() - started >= 1.0
        later = client.function(f"{app}.on_mars").options(wait_for_node=60.0)
        with ThreadPoolExecutor(1) as pool:
            durable = later.spawn()
            direct = pool.submit(later.remote)
            # The scenario itself: the node joins only after the client's lost-call
            # horizon, which must not fail a call that is still waiting to be placed.
            time.sleep(protocol.LOST_AFTER_S + 1)
            assert not direct.done() and not durable.done()
            worker = start_worker(handle.url, "region=mars")
            try:
                mars = node_with(handle, region="mars")
                assert durable.result(timeout=60) == mars
                assert direct.result(timeout=60) == mars
            finally:
                stop_worker(worker)


def test_pin_serves_a_function_only_on_one_node(placed: tuple[Lattice, str, str]) -> None:
    handle, app, gpu = placed
    plain = next(n["id"] for n in status(handle)["nodes"] if not n["labels"])
    superpose_cli("pin", f"{app}.where", plain, url=handle.url, check=True)
    try:
        state = status(handle)
        (entry,) = [a for a in state["apps"] if a["app"] == app]
        assert entry["routing"]["pins"] == {"where": plain}
        with client_on(handle) as client:
            where = client.function(f"{app}.where")
            poll(lambda: where.remote() == plain, "the pin to reach the client")
            assert {where.remote() for _ in range(20)} == {plain}
            assert {f.result(timeout=60) for f in [where.spawn() for _ in range(10)]} == {plain}
            # a pin is a need like any other: one the pinned node lacks cannot be met
            with pytest.raises(sp.NoNodesError, match="gpu=1"):
                where.options(needs={"gpu": "1"}).remote()
    finally:
        superpose_cli("unpin", f"{app}.where", url=handle.url, check=True)
    with client_on(handle) as client:
        where = client.function(f"{app}.where")
        assert len({f.result(timeout=60) for f in [where.spawn() for _ in range(60)]}) >= 2
    del gpu


def test_pin_errors_name_what_is_wrong(placed: tuple[Lattice, str, str]) -> None:
    handle, app, _ = placed
    node = status(handle)["nodes"][0]["id"]
    for args, message in [
        (("pin", f"{app}.where", "n_nope"), "no live node 'n_nope'"),
        (("pin", f"{app}.nope", node), "has no function 'nope'"),
        (("pin", "no_such_app.where", node), "no app named 'no_such_app'"),
        (("pin", "where", node), "expected APP.FN"),
        (("pin", f"{app}.where", "bad id!"), "is not a node id"),
        (("unpin", "no_such_app.where"), "no app named 'no_such_app'"),
    ]:
        proc = superpose_cli(*args, url=handle.url)
        assert proc.returncode == 1, proc.stdout
        assert message in proc.stderr, proc.stderr


def test_warm_affinity_keeps_two_bundles_warm_on_nodes_that_hold_one_each(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes that can each keep one bundle warm, two apps called in turn: once each
    node holds one, every call is served warm (on its node, or handed over to the node
    holding it), where random placement would load a bundle cold on most calls."""
    monkeypatch.setenv("SUPERPOSE_MAX_EXECUTORS", "1")
    handle = start_lattice(tmp_path_factory.mktemp("affinity"), workers=2, gateway=False)
    try:
        names = [unique("warm") for _ in range(2)]
        apps = [  # different code, so different bundles
            write_app(
                tmp_path_factory.mktemp("apps") / name, {"app.py": f"{WHERE}\nTAG = {name!r}\n"}
            )
            for name in names
        ]
        digests = [deploy(handle, folder) for folder in apps]
        with client_on(handle) as client:
            handles = [client.function(f"{folder.name}.where") for folder in apps]

            def partitioned() -> dict[str, str] | None:
                for h in handles * 3:
                    h.remote()
                holders = {}
                for node in status(handle)["nodes"]:
                    for digest in node["warm"]:
                        holders.setdefault(digest, set()).add(node["id"])
                owners = [holders.get(d, set()) for d in digests]
                if all(len(o) == 1 for o in owners) and owners[0] != owners[1]:
                    return {d: next(iter(o)) for d, o in zip(digests, owners, strict=True)}
                return None

            owner = poll(partitioned, "each node to hold one of the bundles")
            before = poll(lambda: settled_loads(handle), "the nodes' counts to settle")
            served = [(i, handles[i].remote()) for _ in range(20) for i in (0, 1)]
        assert all(node == owner[digests[i]] for i, node in served), served
        after = poll(lambda: settled_loads(handle), "the nodes' counts to settle")
        assert after == before, (before, after)
    finally:
        stop_lattice(handle)


def settled_loads(handle: Lattice) -> dict[str, int] | None:
    """Cold loads per node, once two heartbeats in a row agree."""
    first = {n["id"]: n["cold_loads"] for n in status(handle)["nodes"]}
    time.sleep(2.2)
    second = {n["id"]: n["cold_loads"] for n in status(handle)["nodes"]}
    return first if first == second else None


def test_a_node_keeps_at_most_its_executor_limit_evicting_the_least_recently_used(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERPOSE_MAX_EXECUTORS", "2")
    handle = start_lattice(tmp_path_factory.mktemp("lru"), workers=1, gateway=False)
    try:
        names = [unique("lru") for _ in range(3)]
        folders = [
            write_app(tmp_path_factory.mktemp("apps") / n, {"app.py": f"{WHERE}\nTAG = {n!r}\n"})
            for n in names
        ]
        digests = [deploy(handle, folder) for folder in folders]
        with client_on(handle) as client:
            first, second, third = (client.function(f"{n}.where") for n in names)
            first.remote()
            second.remote()
            first.remote()  # the first is now the most recently used
            third.remote()  # evicts the second, not the first

            def warm() -> list[str] | None:
                (node,) = status(handle)["nodes"]
                return sorted(node["warm"]) if node["cold_loads"] == 3 else None

            assert poll(warm, "the third load in a heartbeat") == sorted([digests[0], digests[2]])
            second.remote()  # loaded again, cold
            (node,) = poll(
                lambda: [n for n in status(handle)["nodes"] if n["cold_loads"] == 4] or None,
                "the fourth load",
            )
            assert len(node["warm"]) == 2 and digests[1] in node["warm"]
    finally:
        stop_lattice(handle)


def test_a_star_need_asks_only_that_the_label_exist() -> None:
    from superpose.registry.placement import satisfies

    node = protocol.NodeInfo(id="n1", host="h", pid=1, labels={"gpu": "2"}, slots=1)
    assert satisfies(node, {"gpu": "*"}) and satisfies(node, {"node": "n1"})
    assert not satisfies(node, {"gpu": "1"}) and not satisfies(node, {"region": "*"})
