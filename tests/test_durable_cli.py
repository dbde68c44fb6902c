"""The durable-invocation commands against a real lattice: call --async, result, failed,
replay, cancel."""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fns
import superpose as sp
from conftest import Lattice, poll, start_lattice, stop_lattice, superpose_cli
from superpose import protocol

APP_SOURCE = """
import os
import time

import superpose as sp


@sp.function
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@sp.function
def boom(message):
    raise ValueError(message)


@sp.function
def unless(marker):
    if not os.path.exists(marker):
        raise RuntimeError(f"no {os.path.basename(marker)} yet")
    return "fixed"


@sp.function
def nap(marker, seconds):
    open(marker, "w").close()
    time.sleep(seconds)
    return "rested"
"""

PENDING = 3
CANCELLED = 4


@pytest.fixture(scope="module")
def app(lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = f"dcli_{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("durable_cli") / name
    folder.mkdir()
    (folder / "durable_app.py").write_text(textwrap.dedent(APP_SOURCE))
    superpose_cli("deploy", str(folder), url=lattice.url, check=True)
    return name


def cli(lattice: Lattice, *args: str) -> Any:
    return superpose_cli(*args, url=lattice.url)


def submit(lattice: Lattice, *args: str) -> str:
    """`superpose call ... --async`: exit 0 and exactly one line, the invocation id."""
    proc = cli(lattice, "call", *args, "--async")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1, proc.stdout
    invocation_id: str = proc.stdout.strip()
    assert protocol.is_valid_invocation_id(invocation_id), invocation_id
    return invocation_id


def result_of(lattice: Lattice, invocation_id: str) -> Any:
    """`superpose result ID --wait`: the decoded JSON of a successful invocation."""
    proc = cli(lattice, "result", invocation_id, "--wait", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def failed_json(lattice: Lattice, *args: str) -> list[dict[str, Any]]:
    proc = cli(lattice, "failed", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    letters: list[dict[str, Any]] = json.loads(proc.stdout)
    return letters


# --- call --async and result ---------------------------------------------------------


def test_call_async_prints_the_id_and_result_prints_the_json(lattice: Lattice, app: str) -> None:
    invocation_id = submit(lattice, f"{app}.echo", "[1, [2]]", '{"k": "v"}')
    assert result_of(lattice, invocation_id) == {"args": [1, [2]], "kwargs": {"k": "v"}}
    again = cli(lattice, "result", invocation_id)  # stored: no --wait needed now
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"args": [1, [2]], "kwargs": {"k": "v"}}


def test_the_same_idempotency_key_gives_the_same_id_and_result(lattice: Lattice, app: str) -> None:
    key = f"order-{uuid.uuid4().hex}"
    first = submit(lattice, f"{app}.echo", '["once"]', "--idempotency-key", key)
    assert result_of(lattice, first) == {"args": ["once"], "kwargs": {}}
    second = submit(lattice, f"{app}.echo", '["twice"]', "--idempotency-key", key)
    assert second == first
    assert result_of(lattice, second) == {"args": ["once"], "kwargs": {}}  # not a second run
    other = submit(lattice, f"{app}.echo", '["other"]', "--idempotency-key", key + "-2")
    assert other != first


def test_result_of_a_running_invocation_is_pending_until_cancelled(
    lattice: Lattice, app: str, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    invocation_id = submit(lattice, f"{app}.nap", json.dumps([str(marker), 60]))
    poll(marker.exists, "the invocation to start")

    pending = cli(lattice, "result", invocation_id)
    assert pending.returncode == PENDING, pending.stderr
    assert pending.stdout == ""
    assert f"pending: {invocation_id} has no result yet" in pending.stderr
    assert "--wait" in pending.stderr

    cancelled = cli(lattice, "cancel", invocation_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"cancelled {invocation_id}"

    after = cli(lattice, "result", invocation_id, "--wait", "--timeout", "60")
    assert after.returncode == CANCELLED, after.stderr
    assert f"cancelled: {invocation_id} was cancelled" in after.stderr

    twice = cli(lattice, "cancel", invocation_id)
    assert twice.returncode == 1
    assert "already finished (cancelled)" in twice.stderr


def test_cancelling_a_finished_invocation_says_so(lattice: Lattice, app: str) -> None:
    invocation_id = submit(lattice, f"{app}.echo", "[3]")
    result_of(lattice, invocation_id)
    proc = cli(lattice, "cancel", invocation_id)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert f"{invocation_id} had already finished (done)" in proc.stderr
    assert result_of(lattice, invocation_id) == {"args": [3], "kwargs": {}}  # untouched


def test_an_unknown_id_is_pending_and_waiting_for_it_ends(lattice: Lattice) -> None:
    unknown = f"nobody.{uuid.uuid4().hex[:8]}"
    proc = cli(lattice, "result", unknown)
    assert proc.returncode == PENDING
    waited = cli(lattice, "result", unknown, "--timeout", "0.3")  # --timeout implies --wait
    assert waited.returncode == PENDING
    assert "after waiting 0.3 s" in waited.stderr


@pytest.mark.parametrize("command", ["result", "cancel", "replay"])
def test_a_malformed_id_is_refused(lattice: Lattice, command: str) -> None:
    proc = cli(lattice, command, "not an id!")
    assert proc.returncode == 1
    assert "error: 'not an id!' is not an invocation id" in proc.stderr


def test_results_of_python_spawns_print_as_json(lattice: Lattice, client: sp.Client) -> None:
    square = fns.square.spawn(7)
    small = fns.make_bytes.spawn(3)
    spilled = fns.make_bytes.spawn(300_000)  # over the inline limit: stored as a blob
    for future in (square, small, spilled):
        future.result(timeout=60)
    assert result_of(lattice, square.invocation_id) == 49
    assert result_of(lattice, small.invocation_id) == repr(b"\x07" * 3)  # not JSON: its repr
    assert result_of(lattice, spilled.invocation_id) == repr(b"\x07" * 300_000)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--idempotency-key", "k"], "--idempotency-key needs --async"),
        (["--async", "--timeout", "5"], "--timeout applies to direct calls"),
        (["not json", "--async"], "not valid JSON"),
    ],
)
def test_call_refuses_bad_option_combinations(
    lattice: Lattice, app: str, extra: list[str], problem: str
) -> None:
    proc = cli(lattice, "call", f"{app}.echo", *extra)
    assert proc.returncode == 1
    assert problem in proc.stderr
    assert proc.stdout == ""


def test_call_async_of_an_unknown_function_fails(lattice: Lattice, app: str) -> None:
    proc = cli(lattice, "call", f"{app}.no_such_fn", "[]", "--async")
    assert proc.returncode == 1
    assert "no_such_fn" in proc.stderr
    assert proc.stdout == ""


def test_result_refuses_a_negative_timeout(lattice: Lattice) -> None:
    proc = cli(lattice, "result", "nobody.1", "--timeout", "-1")
    assert proc.returncode == 1
    assert "--timeout must be ≥ 0" in proc.stderr


# --- failed and replay ---------------------------------------------------------------------


def test_a_failure_is_reported_listed_and_replayed_under_a_new_id(
    lattice: Lattice, app: str, tmp_path: Path
) -> None:
    marker = tmp_path / "fix"
    invocation_id = submit(lattice, f"{app}.unless", json.dumps([str(marker)]))

    failed = cli(lattice, "result", invocation_id, "--wait", "--timeout", "60")
    assert failed.returncode == 1
    assert "error: raised: RuntimeError: no fix yet" in failed.stderr
    assert "remote traceback" in failed.stderr
    assert failed.stdout == ""

    letters = poll(
        lambda: [x for x in failed_json(lattice, "--app", app) if x["id"] == invocation_id],
        "the dead letter",
    )
    (letter,) = letters
    assert letter["app"] == app
    assert letter["fn"] == "unless"
    assert letter["attempts"] == 1
    assert letter["failed"] > 0
    assert letter["error"]["type"] == "RuntimeError"
    assert letter["error"]["kind"] == "raised"
    assert letter["error"]["message"] == "no fix yet"
    assert "Traceback" in letter["error"]["traceback"]
    assert invocation_id in {x["id"] for x in failed_json(lattice)}  # unfiltered too

    text = cli(lattice, "failed", "--app", app)
    assert text.returncode == 0, text.stderr
    (line,) = [x for x in text.stdout.splitlines() if x.startswith(invocation_id)]
    assert f"{app}.unless" in line
    assert "attempts=1" in line
    assert "RuntimeError: no fix yet" in line
    assert re.search(r"  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", line), line

    marker.touch()  # the cause is fixed: a replay succeeds
    replayed = cli(lattice, "replay", invocation_id)
    assert replayed.returncode == 0, replayed.stderr
    new_id = replayed.stdout.strip()
    assert protocol.is_valid_invocation_id(new_id)
    assert new_id != invocation_id
    assert result_of(lattice, new_id) == "fixed"
    assert invocation_id not in {x["id"] for x in failed_json(lattice, "--app", app)}

    again = cli(lattice, "replay", invocation_id)  # the letter is gone with the replay
    assert again.returncode == 1
    assert f"no failed invocation {invocation_id}" in again.stderr


def test_replay_of_an_unknown_id_names_it(lattice: Lattice) -> None:
    unknown = f"nobody.{uuid.uuid4().hex[:8]}"
    proc = cli(lattice, "replay", unknown)
    assert proc.returncode == 1
    assert f"error: no failed invocation {unknown}" in proc.stderr
    assert proc.stdout == ""


def test_failed_filters_by_app(lattice: Lattice, app: str) -> None:
    invocation_id = submit(lattice, f"{app}.boom", '["filtered"]')
    poll(
        lambda: invocation_id in {x["id"] for x in failed_json(lattice, "--app", app)},
        "the dead letter",
    )
    other = f"none_{uuid.uuid4().hex[:8]}"  # a typo must not read as "all is well"
    proc = cli(lattice, "failed", "--app", other)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: no app named {other!r} is deployed (see `superpose ls`)"
    bad = cli(lattice, "failed", "--app", "not an app")
    assert bad.returncode == 1
    assert "not an app name" in bad.stderr


@pytest.fixture(scope="module")
def empty_lattice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    """A fresh lattice (no nodes): its dead-letter bucket has never held a key."""
    handle = start_lattice(tmp_path_factory.mktemp("empty"), workers=0, gateway=False)
    yield handle
    stop_lattice(handle)


def test_failed_on_an_empty_bucket_lists_nothing(empty_lattice: Lattice) -> None:
    assert failed_json(empty_lattice) == []
    proc = cli(empty_lattice, "failed")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "no failed invocations"
