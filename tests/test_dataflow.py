"""Futures as arguments make dataflows (issue 16, item 2): a call waits for its inputs,
their bytes go node to node (never through the caller), failures and cancels flow
down the graph, inside functions and for a caller-role client too."""

from __future__ import annotations

import concurrent.futures
import pickle
from collections.abc import Iterator
from typing import Any

import pytest

import superpose as sp
from conftest import Lattice, poll
from superpose.client.dataflow import after, upstream
from superpose.client.futures import Future
from superpose.errors import SuperposeError, UpstreamError
from test_cli import deploy, unique, write_app
from test_roles import connected, mint

APP = '''
import time

import superpose as sp


@sp.function
def square(x):
    return x * x


@sp.function
def add(a, b):
    return a + b


@sp.function
def total(values):
    """Sums numbers found at any depth in lists and dicts."""
    if isinstance(values, dict):
        return sum(total(v) for v in values.values())
    if isinstance(values, (list, tuple)):
        return sum(total(v) for v in values)
    return values


@sp.function
def blob(n):
    return b"b" * n


@sp.function
def size(data):
    return len(data)


@sp.function
async def size_async(data):
    return len(data)


@sp.function
def boom(x):
    raise ValueError(f"boom {x}")


@sp.function
def nap(s):
    time.sleep(s)
    return s


@sp.function
def nested():
    """A dataflow made inside a function, as the executor's own user."""
    return add.spawn(square.spawn(3), square.spawn(4)).result()


@sp.function
def nested_big(n):
    return size.spawn(blob.spawn(n)).result()
'''

MB = 1024 * 1024


@pytest.fixture(scope="module")
def client(lattice: Lattice) -> Iterator[sp.Client]:
    with connected(lattice) as own:
        yield own


@pytest.fixture(scope="module")
def app(lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = unique("flow")
    folder = write_app(tmp_path_factory.mktemp("flow") / name, {f"{name}.py": APP})
    deploy(lattice, folder)
    return name


def fn(client: sp.Client, app: str, name: str) -> sp.RemoteFunction:
    return client.function(f"{app}.{name}")


def test_add_of_two_squares(client: sp.Client, app: str) -> None:
    square, add = fn(client, app, "square"), fn(client, app, "add")
    assert add.spawn(square.spawn(3), square.spawn(4)).result() == 25


def test_futures_at_any_depth(client: sp.Client, app: str) -> None:
    square, total = fn(client, app, "square"), fn(client, app, "total")
    values = [square.spawn(1), {"a": square.spawn(2), "b": [square.spawn(3), 10]}]
    assert total.spawn(values).result() == 1 + 4 + 9 + 10
    assert total.spawn(values=(square.spawn(5),)).result() == 25  # keywords, tuples


def test_a_chain_of_three(client: sp.Client, app: str) -> None:
    square, add = fn(client, app, "square"), fn(client, app, "add")
    first = square.spawn(2)
    second = add.spawn(first, 1)
    third = add.spawn(second, first)
    assert third.result() == 9 and second.result() == 5 and first.result() == 4
    assert third.invocation_id and third.invocation_id != second.invocation_id


def test_a_finished_future_as_an_argument(client: sp.Client, app: str) -> None:
    square, add = fn(client, app, "square"), fn(client, app, "add")
    done = square.spawn(6)
    assert done.result() == 36
    assert add.spawn(done, done).result() == 72


@pytest.mark.parametrize("n", [1 * MB, 20 * MB])
def test_a_big_intermediate_result_never_reaches_the_caller(
    client: sp.Client, app: str, n: int
) -> None:
    blob, size = fn(client, app, "blob"), fn(client, app, "size")
    before = client.nc.stats["in_bytes"]
    made = blob.spawn(n)
    measured = size.spawn(made)
    assert measured.result() == n
    assert client.nc.stats["in_bytes"] - before < 256 * 1024  # notifications only
    assert made.result() == b"b" * n  # fetched when asked for, not before
    assert client.nc.stats["in_bytes"] - before >= n


async def test_a_lazy_result_can_be_awaited(client: sp.Client, app: str) -> None:
    blob, size = fn(client, app, "blob"), fn(client, app, "size")
    made = blob.spawn(MB)
    assert await size.spawn(made) == MB
    assert await made == b"b" * MB


def test_an_async_function_and_gather_of_a_lazy_input(client: sp.Client, app: str) -> None:
    blob, size_async = fn(client, app, "blob"), fn(client, app, "size_async")
    made = blob.spawn(MB)
    assert size_async.spawn(made).result() == MB
    assert sp.gather(made, progress=False) == [b"b" * MB]  # fetched here, once


def test_a_dependent_that_cannot_be_sent_fails_with_the_reason() -> None:
    finished = Future()
    finished.set_result(1)

    def refused() -> Future:
        raise SuperposeError("this superpose client is closed")

    dependent = after([finished], refused)
    with pytest.raises(SuperposeError, match="client is closed"):
        dependent.result(0)


def test_a_failed_input_fails_its_dependents_naming_it(client: sp.Client, app: str) -> None:
    boom, add = fn(client, app, "boom"), fn(client, app, "add")
    failed = boom.spawn(7)
    dependent = add.spawn(failed, 1)
    further = add.spawn(dependent, 1)
    for future in (dependent, further):
        with pytest.raises(sp.UpstreamError) as caught:
            future.result()
        assert caught.value.invocation_id == failed.invocation_id
        assert failed.invocation_id in str(caught.value) and "boom 7" in str(caught.value)
        assert isinstance(caught.value.error, ValueError)
    assert not dependent.invocation_id  # never sent


def test_upstream_names_the_first_failure() -> None:
    first = UpstreamError("d-1", ValueError("x"))
    assert upstream(object(), first).invocation_id == "d-1"
    assert "never submitted" in str(UpstreamError("", ValueError("x")))
    copied = pickle.loads(pickle.dumps(first))
    assert copied.invocation_id == "d-1" and str(copied) == str(first)


def test_cancelling_an_input_cancels_its_dependents(client: sp.Client, app: str) -> None:
    nap, add = fn(client, app, "nap"), fn(client, app, "add")
    slow = nap.spawn(60)
    dependent = add.spawn(slow, 1)
    further = add.spawn(dependent, 1)
    assert slow.cancel()
    poll(lambda: dependent.cancelled() and further.cancelled(), "dependents cancelled")
    assert not dependent.invocation_id


def test_cancelling_a_dependent_cancels_its_invocation(client: sp.Client, app: str) -> None:
    nap, square = fn(client, app, "nap"), fn(client, app, "square")
    running = nap.spawn(square.spawn(8))  # sleeps 64 s once sent
    poll(lambda: bool(running.invocation_id), "the dependent sent")
    assert running.cancel() and running.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):  # its stored result says so
        client.result(running.invocation_id, timeout=60)
    slow = nap.spawn(60)
    waiting = nap.spawn(slow)
    assert waiting.cancel()
    assert not waiting.invocation_id  # never sent
    assert slow.cancel()  # cancelling a dependent leaves its inputs alone


def test_a_future_of_a_remote_call_and_of_a_map_item(client: sp.Client, app: str) -> None:
    square, add = fn(client, app, "square"), fn(client, app, "add")
    direct = square._submit((5,), {}, durable=False)  # what .remote does
    assert add.spawn(direct, 1).result() == 26
    assert add.remote(square.spawn(2), square.spawn(3)) == 13
    items = list(square.map([1, 2, 3]))
    assert items == [1, 4, 9]
    assert list(add.map([square.spawn(1), square.spawn(2)], [10, 20])) == [11, 24]


def test_a_future_cannot_travel_on_its_own(client: sp.Client, app: str) -> None:
    future = fn(client, app, "square").spawn(1)
    with pytest.raises(TypeError, match="only as an argument of a call"):
        pickle.dumps(future)
    with pytest.raises(sp.SerializationError, match="Future"):
        sp.put([future])
    future.result()


def test_a_dataflow_inside_a_function(client: sp.Client, app: str) -> None:
    assert fn(client, app, "nested").remote() == 25
    assert fn(client, app, "nested_big").remote(2 * MB) == 2 * MB


def test_a_caller_role_client(lattice: Lattice, app: str) -> None:
    with connected(lattice, mint(lattice, "caller")) as caller:
        square, add = fn(caller, app, "square"), fn(caller, app, "add")
        assert add.spawn(square.spawn(3), square.spawn(4)).result() == 25
        blob, size = fn(caller, app, "blob"), fn(caller, app, "size")
        made = blob.spawn(MB)
        assert size.spawn(made).result() == MB
        assert made.result() == b"b" * MB
        with pytest.raises(sp.UpstreamError):
            add.spawn(fn(caller, app, "boom").spawn(1), 1).result()


def test_a_tree_of_two_thousand_tasks(client: sp.Client, app: str) -> None:
    square, add = fn(client, app, "square"), fn(client, app, "add")
    level: list[Any] = [square.spawn(i) for i in range(1000)]
    while len(level) > 1:
        pairs = [add.spawn(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    assert level[0].result() == sum(i * i for i in range(1000))
