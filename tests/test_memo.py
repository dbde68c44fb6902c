"""Memoization (issue 16, item 5): ``cache=True`` runs an identical call once.

Every test counts the runs its functions write to a file (``memo_fns.note``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import memo_fns
import superpose as sp
from conftest import Lattice, poll, superpose_cli
from memo_fns import runs
from superpose import protocol
from superpose.client import memo, memo_batch
from superpose.client.futures import Future
from superpose.client.options import Options
from superpose.errors import BadRequestError
from superpose.lattice import memo_store, objects, payload, ref_sealing
from superpose.lattice.inputs import Input
from superpose.lattice.memo_key import Uncanonical, call_key, register_digest
from superpose.lattice.refs import Ref
from superpose.node.executor import memo_writes
from test_cli import deploy, unique, write_app
from test_roles import Wire, connected, mint


def test_an_identical_call_runs_once_and_other_arguments_run_again(
    client: sp.Client, tmp_path: Path
) -> None:
    d = str(tmp_path)
    first = memo_fns.tenfold.spawn(d, 3)
    assert first.result(timeout=60) == [3] * 10 and not first.cached
    again = memo_fns.tenfold.spawn(d, 3)
    assert again.result(timeout=60) == [3] * 10 and again.cached
    assert memo_fns.tenfold.remote(d, 3) == [3] * 10  # remote and spawn share the entry
    assert runs(d, "tenfold") == 1
    assert memo_fns.tenfold.remote(d, 4) == [4] * 10
    assert runs(d, "tenfold") == 2


def test_map_hits_the_entries_a_first_map_stored(client: sp.Client, tmp_path: Path) -> None:
    d = str(tmp_path)
    items = [{"k": i, "tags": {"a", "b"}} for i in range(30)]
    assert list(memo_fns.tenfold.map([d] * 30, items)) == [[i] * 10 for i in items]
    assert runs(d, "tenfold") == 30
    shuffled = [{"tags": {"b", "a"}, "k": i} for i in range(30)]  # equal values, other order
    assert list(memo_fns.tenfold.map([d] * 30, shuffled)) == [[i] * 10 for i in items]
    assert runs(d, "tenfold") == 30


def test_twenty_identical_calls_at_once_run_once(client: sp.Client, tmp_path: Path) -> None:
    d = str(tmp_path)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: memo_fns.tenfold.remote(d, "same"), range(20)))
    assert answers == [["same"] * 10] * 20
    assert runs(d, "tenfold") == 1


def test_a_result_expires_after_cache_ttl(client: sp.Client, tmp_path: Path) -> None:
    d = str(tmp_path)
    assert memo_fns.brief.remote(d, 1) == 1
    poll(lambda: memo_fns.brief.remote(d, 1) == 1 and runs(d, "brief") == 2, "the entry to expire")


def test_failures_are_not_cached(client: sp.Client, tmp_path: Path) -> None:
    d = str(tmp_path)
    for _ in range(2):
        with pytest.raises(memo_fns.Boom, match="no 5"):
            memo_fns.explode.remote(d, 5)
    assert runs(d, "explode") == 2


def test_an_unhashable_argument_runs_uncached_with_one_warning(
    client: sp.Client, tmp_path: Path
) -> None:
    d = str(tmp_path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert memo_fns.describe.remote(d, memo_fns.Opaque(4)) == 4
        assert memo_fns.describe.spawn(d, memo_fns.Opaque(4)).result(timeout=60) == 4
    uncached = [w for w in seen if issubclass(w.category, sp.UncachedWarning)]
    assert len(uncached) == 1, [str(w.message) for w in seen]
    assert "describe ran uncached: cannot hash a memo_fns.Opaque" in str(uncached[0].message)
    assert runs(d, "describe") == 2


def test_a_cached_call_inside_a_function(client: sp.Client, tmp_path: Path) -> None:
    d = str(tmp_path)
    assert memo_fns.nested.remote(d, 8) == [[8] * 10, [8] * 10, True]
    assert memo_fns.nested.remote(d, 8) == [[8] * 10, [8] * 10, True]
    assert runs(d, "tenfold") == 1  # the executors' users read and wrote the entry


def test_with_options_turns_caching_on_and_off(client: sp.Client, tmp_path: Path) -> None:
    d = str(tmp_path)
    plain = memo_fns.tenfold.with_options(cache=False)
    plain.remote(d, 1)
    plain.remote(d, 1)
    assert runs(d, "tenfold") == 2
    memo_fns.tenfold.with_options(cache=True, cache_ttl=60).remote(d, 1)
    memo_fns.tenfold.with_options(cache=True, cache_ttl=60).remote(d, 1)
    assert runs(d, "tenfold") == 3


def test_bad_cache_options_are_refused() -> None:
    with pytest.raises(BadRequestError, match="cache must be True or False"):
        memo_fns.tenfold.with_options(cache="yes")
    with pytest.raises(BadRequestError, match="cache_ttl must be > 0 and at most"):
        sp.function(cache=True, cache_ttl=0)
    with pytest.raises(BadRequestError, match="cache_ttl must be a number"):
        sp.function(cache=True, cache_ttl="1h")  # type: ignore[arg-type]


# --- keys ---------------------------------------------------------------------------


def key(*args: object, **kwargs: object) -> str:
    return call_key("app", "fn", "d" * 64, "", args, kwargs)


def test_keys_follow_values_not_their_order_or_pickle() -> None:
    assert key({"a": 1, "b": [1, 2]}) == key({"b": [1, 2], "a": 1})
    assert key({3, 1, 2}) == key({1, 2, 3})
    assert key((1, 2)) != key([1, 2])
    assert key(1) != key(1.0) != key(True)
    assert key(b"x") != key("x")
    assert key(x=1) != key(1)
    assert call_key("app", "fn", "d" * 64, "env", (), {}) != key()
    assert call_key("app", "fn", "e" * 64, "", (), {}) != key()
    assert key().startswith("app.fn.")


def test_unhashable_arguments_say_what_they_are() -> None:
    with pytest.raises(Uncanonical, match=r"memo_fns\.Opaque"):
        key([memo_fns.Opaque(1)])
    looped: list[object] = []
    looped.append(looped)
    with pytest.raises(Uncanonical, match="nested over"):
        key(looped)


def test_a_registered_type_hashes_by_its_digest() -> None:
    class Named:
        def __init__(self, digest: bytes, payload: object) -> None:
            self.digest, self.payload = digest, payload

    register_digest(Named, lambda ref: ref.digest)
    assert key(Named(b"1", object())) == key(Named(b"1", object()))
    assert key(Named(b"1", 0)) != key(Named(b"2", 0))


# --- deployed apps, roles and the CLI -------------------------------------------------

COUNTER = """
import os
import superpose as sp


@sp.function(cache=True)
def double(directory: str, x: int) -> int:
    fd = os.open(os.path.join(directory, "double.runs"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, b"ran\\n")
    os.close(fd)
    return x * {factor}
"""


def deploy_counter(lattice: Lattice, folder: Path, factor: int) -> None:
    write_app(folder, {"app.py": COUNTER.format(factor=factor)})
    deploy(lattice, folder)


def test_a_redeploy_misses_and_a_caller_role_shares_the_cache(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    app = unique("memo")
    d = str(tmp_path)
    deploy_counter(lattice, tmp_path / app, 2)  # cache=True recorded at deploy
    double = client.function(f"{app}.double")
    assert double.remote(d, 5) == 10
    with connected(lattice, mint(lattice, "caller", app=app)) as caller:
        assert caller.function(f"{app}.double").remote(d, 5) == 10  # read as a caller
        assert caller.function(f"{app}.double").remote(d, 6) == 12  # written as a caller
    assert double.remote(d, 6) == 12
    assert runs(d, "double") == 2
    deploy_counter(lattice, tmp_path / app, 3)  # new code: new keys
    assert client.function(f"{app}.double").remote(d, 5) == 15
    assert runs(d, "double") == 3


def test_cache_ls_and_clear(lattice: Lattice, client: sp.Client, tmp_path: Path) -> None:
    app = unique("memo")
    d = str(tmp_path)
    deploy_counter(lattice, tmp_path / app, 2)
    double = client.function(f"{app}.double")
    assert [double.remote(d, x) for x in (1, 2)] == [2, 4]
    listed = superpose_cli("cache", "ls", app, "--json", url=lattice.url, check=True)
    rows = json.loads(listed.stdout)
    assert sorted((r["fn"], r["state"]) for r in rows) == [("double", "cached")] * 2
    shown = superpose_cli("cache", "ls", app, url=lattice.url, check=True).stdout
    assert f"{app}.double" in shown
    cleared = superpose_cli("cache", "clear", f"{app}.double", url=lattice.url, check=True)
    assert "cleared 2 cached result(s)" in cleared.stdout
    assert double.remote(d, 1) == 2
    assert runs(d, "double") == 3  # ran again


def test_cache_commands_name_an_unknown_app_or_function(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    app = unique("memo")
    deploy_counter(lattice, tmp_path / app, 2)
    for args, said in (
        (("clear", "nosuchapp"), "no app named 'nosuchapp' is deployed"),
        (("ls", "nosuchapp"), "no app named 'nosuchapp' is deployed"),
        (("clear", f"{app}.nope"), f"app {app!r} has no function 'nope'"),
        (("clear", "bad name"), "'bad name' is not an app or function name"),
    ):
        proc = superpose_cli("cache", *args, url=lattice.url)
        assert proc.returncode == 1 and said in proc.stderr, proc.stderr


def test_callers_pinned_by_app_claim_its_keys_but_never_write_a_result() -> None:
    from superpose.security import roles

    pub = roles.permissions("caller", owner="c", app="shop")["pub"]["allow"]  # type: ignore[index]
    claims = protocol.MEMO_CLAIMS_BUCKET
    assert protocol.memo_subject("shop", claims) in pub
    assert protocol.memo_subject(None, claims) not in pub
    assert not [grant for grant in pub if grant.startswith("$KV.sp_memo.")]


def _on_loop(client: sp.Client, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, client.loop).result(timeout=60)


def test_a_burst_is_looked_up_in_one_batch_or_key_by_key_for_a_caller_of_one_app(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    app = unique("memo")
    d = str(tmp_path)
    deploy_counter(lattice, tmp_path / app, 2)
    double = client.function(f"{app}.double")
    assert list(double.map([d] * 20, range(20))) == [2 * i for i in range(20)]
    assert runs(d, "double") == 20
    futures = [double.spawn(d, i) for i in range(20)]
    assert [f.result(timeout=60) for f in futures] == [2 * i for i in range(20)]
    assert all(f.cached for f in futures) and runs(d, "double") == 20
    assert _on_loop(client, memo_store.batch_permitted(client.nc)) is True  # admin
    keys = [f"{app}.double.{'0' * 64}", f"{app}.double.{'1' * 64}"]
    with connected(lattice, mint(lattice, "caller", app=app)) as caller:
        assert _on_loop(caller, memo_store.batch_permitted(caller.nc)) is False
        fn = caller.function(f"{app}.double")
        assert list(fn.map([d] * 20, range(20))) == [2 * i for i in range(20)]
        store = _on_loop(caller, memo.store_of(caller))
        assert _on_loop(caller, store.look_many(keys)) == {}  # key by key, refused nothing
        assert store.batch_allowed is False
    with connected(lattice, mint(lattice, "caller")) as anyapp:  # a caller of every app
        assert _on_loop(anyapp, memo_store.batch_permitted(anyapp.nc)) is True
        assert list(anyapp.function(f"{app}.double").map([d] * 20, range(20))) == [
            2 * i for i in range(20)
        ]
    assert runs(d, "double") == 20  # every one of them a hit


def test_a_burst_inside_a_function_is_looked_up_key_by_key_by_the_app_user(
    client: sp.Client, tmp_path: Path
) -> None:
    d = str(tmp_path)
    first = memo_fns.nested_burst.remote(d, 12)
    again = memo_fns.nested_burst.remote(d, 12)
    assert first[0] == again[0] == [[i] * 10 for i in range(12)]
    assert again[1] == [True] * 12 and again[2] is False  # batches name no app: refused
    assert runs(d, "tenfold") == 12


def test_a_failed_drain_fails_its_calls_and_the_next_burst_drains_again(
    client: sp.Client,
) -> None:
    def broken(call: Any, out: sp.Future) -> Any:
        raise RuntimeError("the drain broke")

    async def settled(call: Any, out: sp.Future) -> None:
        out.set_result("settled")

    nowhere = SimpleNamespace(client=client, key=f"nosuchapp.fn.{'0' * 64}")  # a miss
    lookups = memo_batch.Lookups(client, memo_batch.Ways(memo.store_of, memo.hit, broken))
    first = sp.Future()
    lookups.add(nowhere, first)
    with pytest.raises(RuntimeError, match="the drain broke"):
        first.result(timeout=30)
    lookups.ways = memo_batch.Ways(memo.store_of, memo.hit, settled)
    second = sp.Future()
    lookups.add(nowhere, second)
    assert second.result(timeout=30) == "settled"


def test_a_traced_cached_call_says_cached_in_its_trace(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    """Issue 16 item 5: the hit's trace has a span saying ``cached``, by no node."""
    d = str(tmp_path)
    assert memo_fns.tenfold.remote(d, 11) == [11] * 10  # stored
    trace_id = uuid.uuid4().hex[:16]
    ctx = protocol.CallContext(trace=True, trace_id=trace_id)
    target = memo_fns.tenfold._target(client)
    hit = memo.submit(client, target, (d, 11), {}, Options(), durable=False, ctx=ctx)
    assert hit.result(timeout=60) == [11] * 10 and hit.cached
    assert runs(d, "tenfold") == 1

    def shown() -> str:
        proc = superpose_cli("trace", trace_id, url=lattice.url)
        return proc.stdout if proc.returncode == 0 else ""

    line = poll(shown, "the cached span")
    assert "memo_fns.tenfold@" in line and "cached (no node ran it)" in line and "ok" in line
    as_json = json.loads(superpose_cli("trace", trace_id, "--json", url=lattice.url).stdout)
    assert [(s["cached"], s["node"]) for s in as_json] == [(True, "cache")]


def test_a_cached_call_inside_a_traced_request_is_a_cached_child_span(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    """Recorded by the executor that looked it up (its own user may publish spans)."""
    d = str(tmp_path)
    trace_id = uuid.uuid4().hex[:16]
    ctx = protocol.CallContext(trace=True, trace_id=trace_id)
    target = memo_fns.nested._target(client)
    outer = client.submit(target, (d, 13), {}, Options(), ctx=ctx)
    assert outer.result(timeout=60) == [[13] * 10, [13] * 10, True]

    def spans() -> list[dict[str, Any]] | None:
        proc = superpose_cli("trace", trace_id, "--json", url=lattice.url)
        found = json.loads(proc.stdout) if proc.returncode == 0 else []
        return found if len(found) >= 3 else None

    found = poll(spans, "three spans: nested, its first (run) and second (cached) call")
    by_fn = sorted((s["fn"], s["cached"]) for s in found)
    assert by_fn == [("nested", False), ("tenfold", False), ("tenfold", True)]
    nested_id = next(s["id"] for s in found if s["fn"] == "nested")
    assert all(s["parent_id"] == nested_id for s in found if s["fn"] == "tenfold")


def test_a_memoized_dataflow_reruns_from_the_cache_without_waiting_for_inputs(
    client: sp.Client, tmp_path: Path
) -> None:
    """A cached call's future stands for its result by its key (issue 16's memoized
    dataflow): the dependent is keyed before its inputs finish, and a rerun runs nothing."""
    d = str(tmp_path)

    def graph() -> sp.Future:
        left, right = memo_fns.tenfold.spawn(d, 21), memo_fns.tenfold.spawn(d, 22)
        return memo_fns.joined.spawn(d, left, right)

    first = graph()
    assert first.result(timeout=60) == [21] * 10 + [22] * 10 and not first.cached
    assert (runs(d, "tenfold"), runs(d, "joined")) == (2, 1)
    again = graph()
    assert again.result(timeout=60) == [21] * 10 + [22] * 10 and again.cached
    assert (runs(d, "tenfold"), runs(d, "joined")) == (2, 1)
    other = memo_fns.joined.spawn(d, memo_fns.tenfold.spawn(d, 21), memo_fns.tenfold.spawn(d, 23))
    assert other.result(timeout=60)[-1] == 23 and (runs(d, "tenfold"), runs(d, "joined")) == (3, 2)


def test_a_future_of_an_uncached_call_makes_its_dependent_run_uncached(
    client: sp.Client, tmp_path: Path
) -> None:
    d = str(tmp_path)
    uncached = memo_fns.tenfold.with_options(cache=False).spawn(d, 2)
    with pytest.warns(memo.UncachedWarning, match="a Future of an uncached call"):
        dependent = memo_fns.joined.spawn(d, uncached, memo_fns.tenfold.spawn(d, 1))
    assert dependent.result(timeout=60) == [2] * 10 + [1] * 10
    assert not dependent.cached and runs(d, "joined") == 1


def test_refs_are_keyed_by_digest_not_by_value(client: sp.Client, tmp_path: Path) -> None:
    """Issue 16 item 5: the same value put twice is one key; another value misses."""
    d = str(tmp_path)
    blob = uuid.uuid4().bytes * 1000
    assert memo_fns.measured.remote(d, sp.put(blob)) == len(blob)
    again = memo_fns.measured.spawn(d, sp.put(blob))  # a new Ref, the same digest
    assert again.result(timeout=60) == len(blob) and again.cached
    assert runs(d, "measured") == 1
    assert memo_fns.measured.remote(d, sp.put(blob + b"!")) == len(blob) + 1
    assert runs(d, "measured") == 2


# --- nobody but the executor that ran a call writes its result (issue 15, item 2) ------


async def test_a_caller_cannot_write_a_cached_result(lattice: Lattice) -> None:
    """A caller of an app may claim its keys, and is refused a result write."""
    app = unique("memo")
    w = await Wire().open(lattice.url, mint(lattice, "caller", app=app))
    claim = protocol.kv_subject(protocol.MEMO_CLAIMS_BUCKET, f"{app}.f.{'0' * 64}")
    await w.nc.publish(claim, b"x")
    planted = protocol.kv_subject(protocol.MEMO_BUCKET, f"{app}.f.{'0' * 64}")
    await w.nc.publish(planted, b"x")
    try:
        assert "publish" in await w.refused(planted)
        assert not [e for e in w.errors if protocol.MEMO_CLAIMS_BUCKET in e]
    finally:
        await w.nc.close()


def test_a_call_sent_with_another_calls_key_stores_nothing(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    """A caller that runs double(1) asking for double(2)'s key (to plant 2 as double(2)'s
    answer) gets its call run, and nothing is stored under either key."""
    app = unique("memo")
    d = str(tmp_path)
    deploy_counter(lattice, tmp_path / app, 2)
    double = client.function(f"{app}.double")
    target = double._target(client)
    forged = protocol.MemoAsk(call_key(app, "double", target.digest, target.env, (d, 2), {}), 60)
    future = client.submit(target, (d, 1), {}, Options(memo_ask=forged))
    assert future.result(timeout=60) == 2
    assert double.remote(d, 2) == 4  # not the planted 2: it ran
    assert runs(d, "double") == 2
    assert double.remote(d, 2) == 4 and runs(d, "double") == 2  # its own run was stored


def test_a_ref_forged_to_name_other_bytes_stores_nothing(client: sp.Client, tmp_path: Path) -> None:
    """A Ref naming one value's digest but carrying another's bytes runs, and its result is
    not stored under the genuine Ref's key."""
    d = str(tmp_path)
    genuine = uuid.uuid4().bytes * 10
    ref = sp.put(genuine)
    other = bytes(payload.encode_value(b"forged", protocol.CODEC_PICKLE))
    forged = Ref(ref.digest, len(other), data=other)
    assert memo_fns.measured.remote(d, forged) == len(b"forged")
    assert memo_fns.measured.remote(d, ref) == len(genuine)  # ran: nothing was planted
    assert runs(d, "measured") == 2


def test_a_result_too_big_for_an_entry_is_stored_beside_it(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    """A 2 MiB result (an entry holds 768 KiB) is cached in the values store, and a
    caller pinned to the app reads it from there."""
    app = unique("memo")
    d = str(tmp_path)
    deploy_counter(lattice, tmp_path / app, 2)
    big = uuid.uuid4().bytes * 2**16  # 1 MiB: doubled, 2 MiB
    assert client.function(f"{app}.double").remote(d, big) == big * 2
    with connected(lattice, mint(lattice, "caller", app=app)) as caller:
        again = caller.function(f"{app}.double").spawn(d, big)
        assert again.result(timeout=60) == big * 2 and again.cached
    assert runs(d, "double") == 1

    async def listed() -> list[memo_store.Listed]:
        return await (await memo.store_of(client)).entries(app)

    [entry] = _on_loop(client, listed())
    assert entry.entry.stored and entry.size > 2 * 2**20 and not entry.entry.value


def test_a_claim_taken_for_a_call_cancelled_meanwhile_is_dropped(
    client: sp.Client, tmp_path: Path
) -> None:
    """A cached call cancelled while its claim was on the way must not keep the key
    claimed: the next identical call would wait for it until the claim went stale."""
    target = memo_fns.tenfold._target(client)
    key = protocol.memo_key(target.app, "tenfold", uuid.uuid4().hex)
    call = memo.Call(client, target, (str(tmp_path), 1), {}, Options(), False, None, key, 60.0)
    out = Future()
    out.cancel()

    async def claimed() -> protocol.MemoEntry | None:
        store = await memo.store_of(client)
        await memo._look_or_run(store, call, out)
        return (await store.look_claim(key)).entry

    assert _on_loop(client, claimed()) is None
    assert runs(str(tmp_path), "tenfold") == 0


def test_inputs_the_executor_cannot_read_from_the_cache_leave_nothing_stored(
    client: sp.Client,
) -> None:
    """``memo_writes.cached_inputs``: an input keyed by another app's cache (which an
    executor may not read) or by an entry gone since gives no values: the call reads
    its inputs as sent and stores nothing."""
    inv = SimpleNamespace(app="mine", fn="f")
    inline = protocol.Payload(codec=protocol.CODEC_PICKLE, data=b"", size=0)
    others = [Input("i1", inline, protocol.memo_key("theirs", "f", "0" * 64))]
    gone = [Input("i2", inline, protocol.memo_key("mine", "f", uuid.uuid4().hex))]

    async def read(found: list[Input]) -> Any:
        return await memo_writes.cached_inputs(await memo.store_of(client), inv, found)  # type: ignore[arg-type]

    assert _on_loop(client, read(others)) is None
    assert _on_loop(client, read(gone)) is None


def test_a_big_result_whose_value_is_gone_runs_again_and_is_stored_anew(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    app = unique("memo")
    d = str(tmp_path)
    deploy_counter(lattice, tmp_path / app, 2)
    double = client.function(f"{app}.double")
    big = uuid.uuid4().bytes * 2**16
    assert double.remote(d, big) == big * 2

    async def drop_value() -> None:
        [listed] = await (await memo.store_of(client)).entries(app)
        name = ref_sealing.object_name(listed.entry.stored)
        await objects.delete(client.nc, protocol.MEMO_VALUES_BUCKET, name)

    _on_loop(client, drop_value())
    assert double.remote(d, big) == big * 2  # ran again: its value was gone
    assert runs(d, "double") == 2
    assert double.spawn(d, big).result(timeout=60) == big * 2 and runs(d, "double") == 2
