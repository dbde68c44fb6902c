"""Shared dicts and queues (issue 16 item 6), end to end against the real lattice: from
the caller, from inside functions (each executor its own NATS user), and as a
caller-role client."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

import shared_state_fns as fns
import superpose as sp
from conftest import Lattice, poll
from superpose import protocol
from superpose.client import shared_dict
from superpose.errors import BadRequestError, NotFoundError, SerializationError
from test_cli import unique
from test_roles import connected, mint

APP = "shared_state_fns"
"""The app the functions of shared_state_fns.py run as (script mode: the module name)."""


def name(what: str) -> str:
    return unique(what).replace(".", "_")


def test_a_function_runs_as_the_app_its_dicts_belong_to(client: sp.Client) -> None:
    assert fns.app_name.remote() == protocol.app_scope(APP)


def test_dict_operations_from_the_caller(client: sp.Client) -> None:
    d = sp.Dict(name("d"), app=APP)
    d["a"] = [1, 2]
    assert d["a"] == [1, 2]
    assert "a" in d and "b" not in d
    with pytest.raises(KeyError):
        d["b"]
    assert d.get("b", 7) == 7
    assert d.incr("n") == 1 and d.incr("n", 10) == 11
    assert d.cas("a", [1, 2], "new") and not d.cas("a", [1, 2], "newer")
    assert d.cas("fresh", None, 1)  # a key with no value equals None
    d["user:1"], d["user:2"], d["other key/é"] = 1, 2, 3
    assert d.keys() == sorted(["a", "n", "fresh", "user:1", "user:2", "other key/é"])
    assert d.keys("user:") == ["user:1", "user:2"]
    del d["a"]
    assert "a" not in d
    with pytest.raises(KeyError):
        del d["a"]


def test_dict_operations_from_inside_functions(client: sp.Client) -> None:
    n = name("d")
    assert fns.dict_ops.remote(n) == {
        "a": {"x": 1},
        "b in": True,
        "get missing": "dflt",
        "keyerror": "z",
        "cas ok": True,
        "cas stale": False,
        "incr": 5,
        "keys": ["b", "n"],
    }
    assert sp.Dict(n, app=APP)["b"] == 3  # the caller sees what the function wrote
    assert fns.dict_ops_async.remote(n) == {
        "get": "v",
        "contains": True,
        "incr": 7,
        "cas": True,
        "keys": ["b", "k", "n"],
        "delete": True,
        "after": "gone",
    }


async def test_aio_forms_from_the_callers_own_loop(client: sp.Client) -> None:
    d = sp.Dict(name("d"), app=APP)
    await d.set.aio("k", 1)
    assert await d.get.aio("k") == 1
    assert await d.incr.aio("k") == 2
    q = sp.Queue(name("q"), app=APP)
    await q.put.aio("x")
    assert await q.qsize.aio() == 1
    assert await q.get.aio(timeout=10) == "x"


def test_a_blocking_call_in_async_code_names_the_aio_form(client: sp.Client) -> None:
    message = fns.blocking_in_async.remote(name("d"))
    assert "would freeze the event loop" in message and "await ….set.aio(...)" in message


def test_handles_passed_to_a_function_work_there(client: sp.Client) -> None:
    d, q = sp.Dict(name("d"), shared=True), sp.Queue(name("q"), app=APP)
    d["k"], _ = "v", q.put("item")
    assert fns.use_handles.remote(d, q) == ["v", "item", d.label]


def test_200_concurrent_increments_count_exactly_200(client: sp.Client) -> None:
    n = name("counter")
    futures = [fns.incr.spawn(n, "hits") for _ in range(200)]
    results = [f.result(timeout=300) for f in futures]
    assert sorted(results) == list(range(1, 201))
    assert sp.Dict(n, app=APP)["hits"] == 200


def test_functions_waiting_on_a_queue_give_their_slots_back(
    client: sp.Client, lattice: Lattice
) -> None:
    """Both nodes' only slots held by functions waiting on a queue: the producer still
    gets a slot, as it would if they waited on nested calls."""
    n, started = name("slots"), name("started")
    waiting = [fns.consume_one_after_saying.spawn(n, started) for _ in range(2)]
    poll(lambda: sp.Dict(started, app=APP).get("waiting", 0) == 2, "both consumers waiting")
    assert fns.produce.with_options(timeout=60).remote(n, [1, 2]) == 2
    assert sorted(f.result(timeout=120) for f in waiting) == [1, 2]


def test_a_producer_and_a_consumer_function_share_a_queue(client: sp.Client) -> None:
    n = name("jobs")
    consumer = fns.consume.spawn(n, 30)
    assert fns.produce.remote(n, list(range(30))) == 30
    assert consumer.result(timeout=120) == list(range(30))
    assert len(sp.Queue(n, app=APP)) == 0


def test_an_async_function_gets_from_a_queue(client: sp.Client) -> None:
    n = name("jobs")
    sp.Queue(n, app=APP).put({"job": 1})
    assert fns.consume_async.remote(n) == {"job": 1}


def test_watch_sees_changes(client: sp.Client) -> None:
    d = sp.Dict(name("w"), app=APP)
    with d.watch("user:") as changes:
        d["other"] = 0  # outside the prefix: not seen
        d["user:1"] = "a"
        assert fns.read.remote(d.name, "user:1") == "a"
        del d["user:1"]
        first, second = changes.next(timeout=30), changes.next(timeout=30)
    assert first is not None and (first.key, first.value, first.op) == ("user:1", "a", "set")
    assert second is not None and (second.key, second.op) == ("user:1", "delete")


def test_a_function_watches_a_dict(client: sp.Client) -> None:
    d = sp.Dict(name("w"), app=APP)
    watching = fns.watch_for.spawn(d.name, "job")
    poll(lambda: "ready" in d, "the function to start watching")
    d["job"] = "x"
    assert tuple(watching.result(timeout=120)) == ("x", "set")


async def test_watch_async(client: sp.Client) -> None:
    d = sp.Dict(name("w"), app=APP)
    async with await d.watch.aio() as changes:
        await d.set.aio("k", 1)
        change = await anext(aiter(changes))
    assert (change.key, change.value, change.op) == ("k", 1, "set")


def test_a_key_expires_after_its_ttl(client: sp.Client) -> None:
    d = sp.Dict(name("t"), ttl=1, app=APP)
    with d.watch() as changes:
        d["k"] = 1
        d.set("long", 1, ttl=3600)
        assert d["k"] == 1
        poll(lambda: "k" not in d, "the key to expire")
        seen = [changes.next(timeout=30) for _ in range(3)]
    assert [(c.key, c.op) for c in seen if c] == [("k", "set"), ("long", "set"), ("k", "expired")]
    assert d["long"] == 1


def test_queue_timeouts_raise_empty_and_full(client: sp.Client) -> None:
    q = sp.Queue(name("q"), maxsize=2, app=APP)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)
    with pytest.raises(queue.Empty):
        q.get(timeout=0)
    q.put_many(["a", "b"])
    with pytest.raises(queue.Full):
        q.put("c", timeout=0.1)
    with pytest.raises(queue.Full):  # all or nothing: one item fits, two do not
        q.get()
        q.put_many(["c", "d"], timeout=0)
    assert len(q) == 1 and q.get_many(5) == ["b"]
    assert fns.get_empty.remote(q.name).startswith("Empty")


def test_a_full_queue_takes_a_put_once_there_is_room(client: sp.Client) -> None:
    q = sp.Queue(name("q"), maxsize=1, app=APP)
    q.put(1)
    threading.Timer(0.2, q.get).start()
    q.put(2, timeout=60)
    assert q.get(timeout=10) == 2


def test_a_get_on_a_deleted_queue_is_a_clear_error(client: sp.Client) -> None:
    n = name("q")
    q, other = sp.Queue(n, app=APP), sp.Queue(n, app=APP)
    q.put(1)
    assert other.get(timeout=10) == 1
    q.delete()
    with pytest.raises(NotFoundError, match=f"Queue '{n}' \\(app {APP}\\) was deleted"):
        other.get(timeout=1)
    with pytest.raises(NotFoundError, match="was deleted"):
        q.put(2)
    assert sp.Queue(n, app=APP).qsize() == 0  # a new handle makes it anew


def test_a_queue_made_with_another_maxsize_is_refused(client: sp.Client) -> None:
    n = name("q")
    sp.Queue(n, maxsize=3, app=APP).put(1)
    with pytest.raises(BadRequestError, match="exists with maxsize 3, not 5"):
        sp.Queue(n, maxsize=5, app=APP).put(1)
    assert sp.Queue(n, app=APP).maxsize == 3


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        ("a.b", "starts with a letter or _, then letters, digits, _ or -"),
        ("", "is not allowed"),
        ("x" * 65, "at most 64 characters"),
        ("9lives", "starts with a letter"),
    ],
)
def test_an_invalid_name_is_refused_with_the_rule(bad: str, rule: str) -> None:
    with pytest.raises(BadRequestError, match=rule):
        sp.Dict(bad, app=APP)
    with pytest.raises(BadRequestError, match=rule):
        sp.Queue(bad, app=APP)


def test_bad_arguments_are_named(client: sp.Client) -> None:
    d = sp.Dict(name("d"), app=APP)
    with pytest.raises(BadRequestError, match="keys are strings, got a int"):
        d[1] = 1
    with pytest.raises(BadRequestError, match="a key may not be empty"):
        d[""] = 1
    with pytest.raises(BadRequestError, match="too long"):
        d["." * 200] = 1
    with pytest.raises(BadRequestError, match="ttl must be None or seconds ≥ 1"):
        sp.Dict("d", ttl=0.5, app=APP)
    with pytest.raises(BadRequestError, match="shared=True or app=, not both"):
        sp.Dict("d", shared=True, app=APP)
    with pytest.raises(BadRequestError, match="holds a str; incr needs an int"):
        d["s"] = "text"
        d.incr("s")
    with pytest.raises(BadRequestError, match="maxsize must be an int ≥ 0"):
        sp.Queue("q", maxsize=-1, app=APP)
    with pytest.raises(BadRequestError, match="timeout must be None or seconds ≥ 0"):
        sp.Queue(name("q"), app=APP).get(timeout=-1)
    with pytest.raises(BadRequestError, match="get_many takes n ≥ 1"):
        sp.Queue(name("q"), app=APP).get_many(0)
    with pytest.raises(BadRequestError, match=r"app='a\.b' is not a valid app name"):
        sp.Dict("d", app="a.b")
    with pytest.raises(BadRequestError, match=r"incr adds an int, got 1\.5"):
        d.incr("n", 1.5)  # type: ignore[arg-type]
    with pytest.raises(BadRequestError, match="put_many takes at most 1,000 items"):
        sp.Queue(name("q"), app=APP).put_many(range(1001))
    with pytest.raises(BadRequestError, match="3 items can never fit in maxsize 2"):
        sp.Queue(name("q"), maxsize=2, app=APP).put_many([1, 2, 3])


def test_a_compare_and_set_that_keeps_losing_gives_up_naming_the_key(
    client: sp.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = sp.Dict(name("d"), app=APP)
    d["k"] = 1
    monkeypatch.setattr(shared_dict, "MAX_CAS_ATTEMPTS", 0)  # as if every write lost
    with pytest.raises(sp.LatticeError, match="key 'k': 0 writes in a row lost to others"):
        d.incr("k")
    with d.watch() as changes, pytest.raises(BadRequestError, match="seconds ≥ 0"):
        changes.next(timeout=-1)


def test_a_value_too_big_names_its_key_and_the_limit(client: sp.Client) -> None:
    n = name("d")
    message = fns.too_big.remote(n)
    assert f"Dict '{n}' (app {APP}) key 'huge'" in message
    assert "over the limit of 1,048,576 bytes" in message
    d = sp.Dict(n, app=APP)
    assert "huge" not in d  # never a partial write
    q = sp.Queue(name("q"), app=APP)
    with pytest.raises(BadRequestError, match="item 1 put on Queue"):
        q.put_many([1, b"x" * (2 * 1024 * 1024)])
    assert len(q) == 0


def test_an_unpicklable_value_names_its_key(client: sp.Client) -> None:
    d = sp.Dict(name("d"), app=APP)
    with pytest.raises(SerializationError, match=r"key 'lock': cannot send a _thread\.lock"):
        d["lock"] = threading.Lock()
    assert "lock" not in d
    q = sp.Queue(name("q"), app=APP)
    with pytest.raises(SerializationError, match="item 0 put on Queue"):
        q.put_many([threading.Lock(), 1])
    assert len(q) == 0


def test_shared_dicts_are_lattice_wide(client: sp.Client) -> None:
    n = name("s")
    assert fns.shared_incr.remote(n, "k") == 1
    shared = sp.Dict(n, shared=True)
    assert shared.incr("k") == 2
    assert "k" not in sp.Dict(n, app=APP)  # the app's own dict of that name is another


def test_durable_dicts_and_queues(client: sp.Client) -> None:
    d = sp.Dict(name("d"), durable=True, app=APP)
    d["k"] = 1
    assert d["k"] == 1 and "k" not in sp.Dict(d.name, app=APP)
    q = sp.Queue(name("q"), durable=True, app=APP)
    q.put(1)
    assert q.get(timeout=10) == 1
    n = name("dur")
    assert fns.durable_round_trip.remote(n) == ["kept", "item", 0]
    assert sp.Dict(n, durable=True, app=APP)["k"] == "kept"


def test_a_caller_pinned_to_the_app_uses_its_dicts_and_queues(
    lattice: Lattice, client: sp.Client
) -> None:
    n = name("d")
    assert fns.incr.remote(n, "k") == 1  # as the function's executor user
    # (a caller may not upload script bundles: it uses what the function left)
    with connected(lattice, mint(lattice, "caller", app=APP)):
        d = sp.Dict(n, app=APP)
        assert d.incr("k") == 2
        d["x"] = 1
        assert d.keys() == ["k", "x"]
        with d.watch() as changes:
            d["y"] = 2
            assert changes.next(timeout=30) is not None
        q = sp.Queue(name("q"), maxsize=5, app=APP)
        q.put_many([1, 2])
        assert len(q) == 2 and q.get_many(2, timeout=10) == [1, 2]
        q.delete()
        assert sp.Dict(name("s"), shared=True).incr("k") == 1


def test_a_caller_pinned_to_an_app_cannot_touch_another_apps_dict(
    lattice: Lattice, client: sp.Client
) -> None:
    with connected(lattice, mint(lattice, "caller", app="other_app")):
        d: Any = sp.Dict(name("d"), app=APP)
        with pytest.raises(sp.LatticeError, match="may not use this app's dicts and queues"):
            d["k"] = 1
        q: Any = sp.Queue(name("q"), app=APP)  # its consumer's name is in APP's dicts
        with pytest.raises(sp.LatticeError, match="may not use this app's dicts and queues"):
            q.get(timeout=1)


def test_a_viewer_reads_but_does_not_write(lattice: Lattice, client: sp.Client) -> None:
    n = name("d")
    sp.Dict(n, app=APP)["k"] = "v"
    with connected(lattice, mint(lattice, "viewer", app=APP)):
        d = sp.Dict(n, app=APP)
        assert d["k"] == "v" and d.keys() == ["k"]
        with pytest.raises(sp.LatticeError, match="writing 'app"):
            d["k"] = "w"
    assert sp.Dict(n, app=APP)["k"] == "v"
