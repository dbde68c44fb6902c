"""Durable invocations on the shared lattice: persistence, results by id, retries,
dead letters, idempotency keys, cancellation, stragglers and bounded maps."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

import durable_fns as dfns
import superpose as sp
from conftest import Lattice, client_on, lattice_env, poll, start_lattice, stop_lattice
from superpose import protocol, public
from superpose.client import dead_letters as dead


def _pid_in(path: Path) -> int:
    return int(path.read_text().split()[-1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _idle(client: sp.Client) -> None:
    """Every node has finished what it was given (a fresh no-op round-trips on each)."""
    assert dfns.noop.spawn(0).result(timeout=60) == 0


def test_spawn_is_persisted_and_its_result_can_be_fetched_by_id(
    client: sp.Client, tmp_path: Path
) -> None:
    future = dfns.counted.spawn(str(tmp_path), "a")
    assert future.result(timeout=60) == "a"
    assert future.accepted.is_set()
    assert "." in future.invocation_id  # durable ids name their client
    assert client.result(future.invocation_id, timeout=10) == "a"


def test_a_garbled_notification_is_dropped_and_results_keep_arriving(client: sp.Client) -> None:
    subject = protocol.durable_notify_subject(client.id)
    client.run(client.nc.publish(subject, b"\xc1 not msgpack"))
    client.run(client.nc.publish(subject, msgspec.msgpack.encode({"t": "not a batch"})))
    assert sp.gather(*(dfns.noop.spawn(i) for i in range(50))) == list(range(50))


def test_a_result_is_fetched_by_a_client_that_did_not_submit_it(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    future = dfns.counted.spawn(str(tmp_path), "b")
    future.result(timeout=60)
    other = public.open_in_thread(lattice.url, 0, None)
    try:
        assert other.result(future.invocation_id, timeout=10) == "b"
    finally:
        other.close()


def test_an_unknown_or_malformed_id_is_refused_or_times_out(client: sp.Client) -> None:
    with pytest.raises(sp.errors.BadRequestError, match="not an invocation id"):
        client.result("no spaces allowed", timeout=1)
    with pytest.raises(sp.CallTimeoutError, match="has no result"):
        client.result("nobody.1", timeout=0.3)


def test_user_exceptions_named_in_retry_on_are_retried_with_backoff(
    client: sp.Client, tmp_path: Path
) -> None:
    flaky = dfns.flaky.with_options(retries=3, retry_on=(dfns.Flaky,))
    assert flaky.spawn(str(tmp_path), "f", 2).result(timeout=60) == 3
    assert dfns.runs(str(tmp_path), "f") == 3


def test_exceptions_not_in_retry_on_are_not_retried_and_are_dead_lettered(
    client: sp.Client, tmp_path: Path
) -> None:
    fn = dfns.raises_unlisted.with_options(retries=3, retry_on=(dfns.Flaky,))
    future = fn.spawn(str(tmp_path), "u")
    with pytest.raises(sp.RemoteError) as info:
        future.result(timeout=60)
    assert info.value.type.endswith("NotRetried")
    assert dfns.runs(str(tmp_path), "u") == 1
    letters = client.run(dead.list_failed(client.assets))
    assert future.invocation_id in {letter.id for letter in letters}


def test_a_poison_invocation_that_raises_is_dead_lettered_after_its_attempts(
    client: sp.Client, tmp_path: Path
) -> None:
    fn = dfns.poison_raise.with_options(retries=2, retry_on=("ValueError",))
    future = fn.spawn(str(tmp_path), "p")
    with pytest.raises(sp.RemoteError) as info:
        future.result(timeout=60)
    assert info.value.type == "ValueError"
    assert dfns.runs(str(tmp_path), "p") == 3
    letters = {x.id: x for x in client.run(dead.list_failed(client.assets, app=None))}
    letter = letters[future.invocation_id]
    assert letter.attempts == 3
    assert letter.error.type == "ValueError"
    _idle(client)  # the nodes go on serving


def test_a_poison_invocation_that_crashes_its_process_is_dead_lettered(
    client: sp.Client, tmp_path: Path
) -> None:
    """A crash is an infrastructure failure: retried within the budget without retry_on."""
    future = dfns.poison_crash.with_options(retries=2).spawn(str(tmp_path), "c")
    with pytest.raises(sp.RemoteError) as info:
        future.result(timeout=90)
    assert info.value.kind == protocol.ERR_CRASHED
    assert dfns.runs(str(tmp_path), "c") == 3
    letters = {x.id for x in client.run(dead.list_failed(client.assets))}
    assert future.invocation_id in letters
    _idle(client)


def test_two_hundred_concurrent_submissions_with_one_key_run_once(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    """Four separate clients (four connections), fifty submissions each, at once."""
    clients = [public.open_in_thread(lattice.url, 0, None) for _ in range(4)]
    key = f"order-{time.time_ns()}"
    start = threading.Barrier(len(clients))

    def submit(c: sp.Client) -> list[sp.Future]:
        fn = dfns.counted.with_options(idempotency_key=key)
        fn._bound_client = c  # type: ignore[attr-defined]
        start.wait()
        return [
            c.submit(fn._target(c), (str(tmp_path), "k", 0.2), {}, fn.options_, durable=True)
            for _ in range(50)
        ]

    try:
        with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
            batches = list(pool.map(submit, clients))
        futures = [f for batch in batches for f in batch]
        assert len({f.invocation_id for f in futures}) == 1
        assert [f.result(timeout=60) for f in futures] == ["k"] * 200
        assert dfns.runs(str(tmp_path), "k") == 1
        # After it finished, the same key returns the stored result without a run.
        again = dfns.counted.with_options(idempotency_key=key).spawn(str(tmp_path), "k")
        assert again.result(timeout=30) == "k"
        assert again.invocation_id == futures[0].invocation_id
        assert dfns.runs(str(tmp_path), "k") == 1
    finally:
        for c in clients:
            c.close()


def test_an_invalid_idempotency_key_is_refused() -> None:
    with pytest.raises(sp.errors.BadRequestError, match="idempotency_key"):
        dfns.counted.with_options(idempotency_key="")
    with pytest.raises(sp.errors.BadRequestError, match="retry_on"):
        dfns.counted.with_options(retry_on=(42,))


def test_cancelling_a_running_invocation_kills_it(client: sp.Client, tmp_path: Path) -> None:
    future = dfns.sleep_noted.spawn(str(tmp_path), "r", 60)
    poll(lambda: dfns.runs(str(tmp_path), "r") == 1, "the invocation to start")
    assert future.cancel()
    assert future.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        client.result(future.invocation_id, timeout=10)
    _idle(client)  # the executor running it was killed, so both nodes are free again
    _idle(client)
    assert dfns.runs(str(tmp_path), "r.finished") == 0


CANCEL_AND_LEAVE = """\
import sys, time
import superpose as sp
import durable_fns as dfns

with sp.connect(sys.argv[1], show_logs=False):
    future = dfns.sleep_noted.spawn(sys.argv[2], "c", 60)
    while dfns.runs(sys.argv[2], "c") < 1:
        time.sleep(0.01)
    future.cancel()
    print(future.invocation_id)
"""


def test_a_cancel_made_just_before_the_client_closes_still_reaches_the_lattice(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    """A cancel travels from the caller's thread to the client's loop: a script that
    cancels and exits at once must not leave the invocation running."""
    proc = subprocess.run(
        [sys.executable, "-c", CANCEL_AND_LEAVE, lattice.url, str(tmp_path)],
        cwd=Path(__file__).parent,
        env={**os.environ, **lattice_env(lattice.url)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "was destroyed but it is pending" not in proc.stderr  # the cancel's task
    with pytest.raises(concurrent.futures.CancelledError):
        client.result(proc.stdout.strip(), timeout=10)
    _idle(client)
    _idle(client)
    assert dfns.runs(str(tmp_path), "c.finished") == 0


def test_cancelling_a_queued_invocation_means_it_never_runs(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """One node with one slot, so where the queued invocation waits is certain: behind
    the blocker, on that node."""
    handle = start_lattice(tmp_path_factory.mktemp("queued"), workers=1, gateway=False)
    try:
        with client_on(handle) as client:
            blocker = dfns.sleep_noted.spawn(str(tmp_path), "b", 60)
            poll(lambda: dfns.runs(str(tmp_path), "b") == 1, "the slot busy")
            queued = dfns.counted.spawn(str(tmp_path), "q")
            assert queued.accepted.wait(30)
            assert client.cancel(queued.invocation_id)
            blocker.cancel()
            poll(lambda: not _alive(_pid_in(tmp_path / "b.runs")), "blocker killed")
            assert dfns.noop.spawn(1).result(timeout=60) == 1  # the node is free again
            assert dfns.runs(str(tmp_path), "q") == 0
            assert not client.cancel(queued.invocation_id)  # already final: nothing to cancel
    finally:
        stop_lattice(handle)


def test_a_map_stopped_early_cancels_its_remaining_items(client: sp.Client, tmp_path: Path) -> None:
    results = dfns.counted.map(
        itertools.repeat(str(tmp_path), 400),
        (f"m{i}" for i in range(400)),
        itertools.repeat(0.02, 400),
        window=40,
    )
    assert [next(results) for _ in range(5)] == [f"m{i}" for i in range(5)]
    results.close()  # type: ignore[attr-defined]
    _idle(client)
    _idle(client)
    ran = sum(dfns.runs(str(tmp_path), f"m{i}") for i in range(400))
    assert ran < 400 // 2, f"{ran} of 400 items ran after the map was closed at 5"


def test_a_map_over_a_million_items_streams_within_its_window(lattice: Lattice) -> None:
    """Backpressure: the generator is read only as results are consumed; memory stays flat.

    In its own process so the peak RSS measured is the map's. The whole million runs
    in `make soak` (test_soak.py); here 5,000 results are consumed, then the map closes.
    """
    window = 512
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "million_map.py"),
            lattice.url,
            "5000",
            str(window),
        ],
        env={**os.environ, **lattice_env(lattice.url)},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["drawn"] <= 5000 + window
    assert report["peak_rss_mb"] < 300, report


def test_a_straggler_in_a_map_of_an_idempotent_function_gets_a_duplicate(
    client: sp.Client, tmp_path: Path
) -> None:
    fn = dfns.hang_first.with_options(idempotent=True, timeout=120)
    done: list[list[int]] = []
    runner = threading.Thread(
        target=lambda: done.append(
            list(
                fn.map(
                    itertools.repeat(str(tmp_path), 50),
                    range(50),
                    itertools.repeat(7, 50),
                    itertools.repeat(60, 50),
                )
            )
        ),
        daemon=True,
    )
    runner.start()
    runner.join(timeout=45)  # the hanging first attempt alone would take 60 s
    assert done == [list(range(50))]
    assert dfns.runs(str(tmp_path), "slow7") == 2
    _idle(client)
    _idle(client)


def test_a_node_that_starts_after_a_cancellation_does_not_run_it(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """No node hears the cancel broadcast here: the cancels bucket is what stops it."""
    handle = start_lattice(tmp_path_factory.mktemp("nonodes"), workers=0, gateway=False)
    worker: subprocess.Popen[bytes] | None = None
    try:
        with client_on(handle) as client:
            queued = dfns.counted.spawn(str(tmp_path), "late")
            assert queued.accepted.wait(30)
            assert client.cancel(queued.invocation_id)
            creds = str(handle.lattice.admin_creds.with_name("node.creds"))
            worker = subprocess.Popen(  # as on another machine: only the URL and creds
                [
                    *(sys.executable, "-m", "superpose", "worker", "--lattice", handle.url),
                    *("--creds", creds),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "SUPERPOSE_HOME": str(tmp_path / "worker")},
            )
            assert dfns.noop.spawn(1).result(timeout=60) == 1  # the new node is serving
            assert dfns.noop.spawn(2).result(timeout=60) == 2
            with pytest.raises(concurrent.futures.CancelledError):
                client.result(queued.invocation_id, timeout=10)
        assert dfns.runs(str(tmp_path), "late") == 0
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        stop_lattice(handle)
