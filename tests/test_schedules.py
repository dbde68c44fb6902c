"""Schedules: ``sp.Period`` and ``sp.Cron`` checked where they are written, read by deploy
from the source, and run by the lattice once per tick across its nodes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.js.errors import KeyNotFoundError

import superpose as sp
from conftest import Lattice, poll, superpose_cli
from superpose import protocol
from superpose.code.bundle import Bundle
from superpose.code.discover import discover, functions_in_module
from superpose.code.schedules import from_record
from superpose.lattice import issued
from superpose.lattice.work import work_message
from superpose.node.scheduler import Scheduler
from test_cli import deploy, unique, write_app


def ms(text: str) -> int:
    """``2026-12-08 12:30`` (UTC) in epoch milliseconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def utc(value: int) -> str:
    return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M")


# --- sp.Period ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seconds": 0}, "a period of 0 s is too short for sp.Period: it is at least 1 second"),
        ({}, "a period of 0 s is too short"),
        ({"seconds": -5}, "seconds= of sp.Period must be a number ≥ 0, got -5"),
        ({"minutes": -1, "hours": 1}, "minutes= of sp.Period must be a number ≥ 0, got -1"),
        ({"seconds": 0.5}, "a period of 0.5 s is too short"),
        ({"seconds": "30"}, "seconds= of sp.Period takes a number, got '30'"),
        ({"hours": True}, "hours= of sp.Period takes a number, got True"),
        ({"seconds": float("inf")}, "seconds= of sp.Period must be a number ≥ 0, got inf"),
    ],
)
def test_a_bad_period_is_refused_naming_what_is_wrong(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(sp.UserError, match=message):
        sp.Period(**kwargs)


def test_period_ticks_are_aligned_to_the_epoch() -> None:
    hourly = sp.Period(hours=1)
    assert hourly.next_after(ms("2026-12-08 12:30")) == ms("2026-12-08 13:00")
    assert hourly.next_after(ms("2026-12-08 13:00")) == ms("2026-12-08 14:00")  # strictly after
    assert hourly.latest_at_or_before(ms("2026-12-08 13:00")) == ms("2026-12-08 13:00")
    assert hourly.latest_at_or_before(ms("2026-12-08 13:59")) == ms("2026-12-08 13:00")
    assert repr(sp.Period(seconds=90)) == "Period(minutes=1, seconds=30)"
    assert repr(sp.Period(days=1)) == "Period(days=1)"
    assert sp.Period(minutes=1) == sp.Period(seconds=60)
    assert from_record(sp.Period(seconds=1.5).as_record()) == sp.Period(seconds=1.5)


# --- sp.Cron --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "minute field: '61' is out of range 0-59"),
        ("0 24 * * *", "hour field: '24' is out of range 0-23"),
        ("0 0 0 * *", "day-of-month field: '0' is out of range 1-31"),
        ("0 0 * 13 *", "month field: '13' is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field: '8' is out of range 0-7"),
        ("0 0 * foo *", "month field: 'foo' is not a number, range, list or step"),
        ("*/0 * * * *", "minute field: step '0' in '\\*/0' is not a number ≥ 1"),
        ("0 5-1 * * *", r"hour field: range '5-1' runs backwards \(5 > 1\)"),
        ("0 0 1,x * *", "day-of-month field: 'x' is not a number"),
        ("* * *", "has 3 field.s.; expected 5: minute hour day-of-month month day-of-week"),
        ("", "has 0 field.s.; expected 5"),
        ("0 0 31 2 *", "never fires: none of its months has day 31"),
    ],
)
def test_a_malformed_cron_expression_names_the_bad_field(expression: str, message: str) -> None:
    with pytest.raises(sp.UserError, match=message):
        sp.Cron(expression)


def test_a_cron_expression_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(sp.UserError, match="a cron expression is a string"):
        sp.Cron(5)  # type: ignore[arg-type]


def test_cron_ticks_follow_cron_rules_in_utc() -> None:
    hourly = sp.Cron("0 * * * *")
    assert utc(hourly.next_after(ms("2026-12-08 12:30"))) == "2026-12-08 13:00"
    assert utc(hourly.latest_at_or_before(ms("2026-12-08 12:30"))) == "2026-12-08 12:00"
    assert sp.Cron("@hourly").next_after(ms("2026-12-08 12:30")) == ms("2026-12-08 13:00")
    office = sp.Cron("*/15 9-17 * * mon-fri")
    saturday = ms("2026-12-12 12:00")
    assert utc(office.next_after(saturday)) == "2026-12-14 09:00"  # Monday
    assert utc(office.latest_at_or_before(saturday)) == "2026-12-11 17:45"  # Friday
    # Both day fields restricted: either matches (the 1st, or any Monday).
    either = sp.Cron("0 0 1 * mon")
    assert utc(either.next_after(ms("2026-12-08 00:00"))) == "2026-12-14 00:00"
    assert utc(either.next_after(ms("2026-12-29 00:00"))) == "2027-01-01 00:00"
    assert utc(sp.Cron("0 0 29 2 *").next_after(ms("2026-03-01 00:00"))) == "2028-02-29 00:00"
    assert utc(sp.Cron("30 6 * * 7").next_after(ms("2026-12-08 00:00"))) == "2026-12-13 06:30"
    assert from_record(office.as_record()) == office


# --- the decorator --------------------------------------------------------------------------


def test_a_scheduled_function_must_be_callable_with_no_arguments() -> None:
    with pytest.raises(sp.UserError, match=r"report has a schedule.*'day' have no default"):

        @sp.function(schedule=sp.Period(minutes=5))
        def report(day: str) -> str:
            return day

    with pytest.raises(sp.UserError, match="'limit' have no default"):

        @sp.function(schedule=sp.Cron("0 * * * *"))
        def sweep(*, limit: int) -> int:
            return limit

    @sp.function(schedule=sp.Cron("0 * * * *"))
    def fine(day: str = "today", *rest: int, **more: int) -> str:
        return day

    assert fine.schedule == sp.Cron("0 * * * *")
    assert fine() == "today"


def test_schedule_takes_only_a_period_or_a_cron() -> None:
    with pytest.raises(sp.UserError, match=r"schedule= takes sp.Period\(...\) or sp.Cron"):
        sp.function(schedule="0 * * * *")  # type: ignore[call-overload]


# --- deploy reads schedules from the source ---------------------------------------------------


SCHEDULED = """
import superpose as sp
import superpose
from superpose import Cron, function
from superpose import Period as Every


@sp.function(schedule=sp.Period(seconds=30), retries=2)
def every_30s() -> None:
    pass


@function(schedule=Cron("0 * * * *"))
def hourly() -> None:
    pass


@superpose.function(schedule=superpose.Cron("@daily"))
def daily(when: str = "now") -> None:
    pass


@sp.function(schedule=Every(minutes=5))
def five() -> None:
    pass


@sp.function(schedule=None)
def plain(x: int) -> int:
    return x
"""


def test_deploy_records_schedules_written_in_any_spelling() -> None:
    found = {spec.name: spec.options for spec in functions_in_module("app.py", SCHEDULED.encode())}
    assert found["every_30s"] == {"schedule": {"period_s": 30.0}, "retries": 2}
    assert found["hourly"] == {"schedule": {"cron": "0 * * * *"}}
    assert found["daily"] == {"schedule": {"cron": "@daily"}}
    assert found["five"] == {"schedule": {"period_s": 300.0}}
    assert found["plain"] == {}


@pytest.mark.parametrize(
    ("decorator", "message"),
    [
        ("@sp.function(schedule=EVERY)", "app.py:4: schedule= must be written out as sp.Period"),
        ("@sp.function(schedule=sp.Period(seconds=N))", "app.py:4: the arguments of Period"),
        ("@sp.function(schedule=sp.Period(**K))", "app.py:4: schedule= must be written out"),
        ("@sp.function(schedule=sp.Period(seconds=0))", "app.py:4: a period of 0 s is too short"),
        ("@sp.function(schedule=sp.Period(30))", r"app.py:4: Period\(...\) in schedule=: .*"),
        ("@sp.function(schedule=sp.Cron('61 * * * *'))", "app.py:4: cron '61 .*minute field"),
        ("@sp.function(schedule=sp.Cron('* * *'))", "app.py:4: cron '\\* \\* \\*' has 3 field"),
    ],
)
def test_deploy_refuses_a_schedule_it_cannot_read_naming_file_and_line(
    decorator: str, message: str
) -> None:
    source = f"import superpose as sp\n\nN = 5\n{decorator}\ndef job() -> None:\n    pass\n"
    with pytest.raises(sp.DeployError, match=message):
        functions_in_module("app.py", source.encode())


def test_deploy_refuses_a_scheduled_function_with_required_parameters() -> None:
    source = (
        "import superpose as sp\n\n\n@sp.function(schedule=sp.Period(hours=1))\n"
        "def report(day, *, fmt, verbose=False):\n    pass\n"
    )
    bundle = Bundle({"app.py": source.encode()})
    with pytest.raises(
        sp.DeployError, match=r"app.py:5: report has a schedule.*'day', 'fmt' have no default"
    ):
        discover(bundle)


# --- on the lattice ---------------------------------------------------------------------------

TICKER = """
import superpose as sp
from superpose import runtime


@sp.function({schedule})
def tick() -> str:
    invocation = runtime.current_invocation.get()
    with open({log!r}, "a") as log:  # one short append: atomic, whichever node runs it
        log.write(f"{{invocation.id if invocation else '?'}} {tag}\\n")
    return "{tag}"
"""


def ticker(folder: Path, log: Path, tag: str, schedule: str | None) -> Path:
    text = TICKER.format(schedule=f"schedule={schedule}" if schedule else "", log=str(log), tag=tag)
    return write_app(folder, {"ticker.py": text})


@contextmanager
def scheduled(lattice: Lattice, folder: Path, log: Path, schedule: str) -> Iterator[str]:
    """The ticker deployed with ``schedule`` (its version); on the way out, a version
    without the schedule stops it, for the tests after."""
    version = deploy(lattice, ticker(folder, log, "v1", schedule))
    try:
        yield version
    finally:
        deploy(lattice, ticker(folder, log, "off", None))


def runs(log: Path) -> list[tuple[str, str]]:
    """(invocation id, version tag) of every run so far, in the order they ran."""
    if not log.exists():
        return []
    return [tuple(line.split()) for line in log.read_text().splitlines()]  # type: ignore[misc]


def tick_of(invocation_id: str) -> int:
    return int(invocation_id.rpartition("-")[2])


def schedules_json(lattice: Lattice, app: str) -> list[dict[str, Any]]:
    proc = superpose_cli("schedules", "--app", app, "--json", url=lattice.url, check=True)
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def test_a_one_second_period_runs_once_per_tick_on_two_nodes(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    """20 s of ticks on the two one-slot nodes: every tick ran, none ran twice."""
    app = unique("every")
    log = tmp_path / "runs.log"
    with scheduled(lattice, tmp_path / app, log, "sp.Period(seconds=1)"):
        poll(lambda: len({tick_of(i) for i, _ in runs(log)}) >= 21, "21 ticks", timeout=90)
    ids = [invocation for invocation, _ in runs(log)]
    assert len(ids) == len(set(ids)), f"a tick ran twice: {sorted(ids)}"
    ticks = sorted(tick_of(i) for i in ids)
    assert ticks == list(range(ticks[0], ticks[-1] + 1000, 1000)), f"a tick was skipped: {ticks}"
    assert all(i == protocol.schedule_invocation_id(app, "tick", tick_of(i)) for i in ids)
    assert client.result(ids[-1], timeout=30) == "v1"  # stored like any durable result
    # and issued like any: the gateway finds it, and can cancel a tick still to run
    assert client.run(issued.was_issued(client.assets.issued, ids[-1]))


def test_latest_moves_the_schedule_and_a_version_without_it_stops_it(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    app = unique("moving")
    log = tmp_path / "runs.log"
    folder = tmp_path / app
    v1 = deploy(lattice, ticker(folder, log, "v1", "sp.Period(seconds=1)"))
    poll(lambda: any(tag == "v1" for _, tag in runs(log)), "a tick of v1")
    v2 = deploy(lattice, ticker(folder, log, "v2", "sp.Period(seconds=1)"))
    poll(lambda: runs(log)[-1][1] == "v2", "ticks running v2's code")

    row = poll(lambda: _ok_row(lattice, app, v2), "schedules to show v2's last tick done")
    assert row["schedule"] == "Period(seconds=1)" and row["version"] == v2
    assert row["next_run"] > row["last_run"]["tick"]
    text = superpose_cli("schedules", "--app", app, url=lattice.url, check=True).stdout
    assert f"{app}.tick  Period(seconds=1)  " in text and "ok " in text

    superpose_cli("rollback", app, url=lattice.url, check=True)
    poll(lambda: runs(log)[-1][1] == "v1", "ticks running v1's code again")
    assert v1 != v2

    deploy(lattice, ticker(folder, log, "off", None))
    assert schedules_json(lattice, app) == []
    stopped = _settled_count(log)
    assert all(tag != "off" for _, tag in runs(log)[stopped:])
    assert len(runs(log)) == stopped, "a schedule ran after latest dropped it"


def _ok_row(lattice: Lattice, app: str, version: str) -> dict[str, Any] | None:
    rows = schedules_json(lattice, app)
    last = rows[0]["last_run"] if rows else None
    if last and last["version"] == version and last["status"] == "ok":
        return rows[0]
    return None


def _settled_count(log: Path) -> int:
    """How many runs the log holds once no new one has come for three periods of 1 s:
    the tick a node was submitting as the move reached it may still land."""
    seen, since = len(runs(log)), time.monotonic()
    while time.monotonic() - since < 3.0:
        if len(runs(log)) != seen:
            seen, since = len(runs(log)), time.monotonic()
        time.sleep(0.1)
    return seen


def test_schedules_of_an_unknown_app_is_an_error(lattice: Lattice) -> None:
    proc = superpose_cli("schedules", "--app", "no_such_app_here", url=lattice.url)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no app named 'no_such_app_here' is deployed")


# --- ticks missed while the lattice was down ---------------------------------------------------


class Host:
    """A node as the scheduler sees one: an id and the client's connection."""

    def __init__(self, client: sp.Client, node_id: str = "test-scheduler") -> None:
        self.node_id = node_id
        self.nc = client.nc
        self.assets = client.assets


def test_only_the_most_recent_missed_tick_runs_after_an_outage(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    """A record three hours old (the lattice was down since): a scheduler starting now
    submits the last hour's tick, once, late, and none of the two before it."""
    app = unique("outage")
    log = tmp_path / "runs.log"
    hourly = sp.Period(hours=1)
    deploy(lattice, ticker(tmp_path / app, log, "v1", "sp.Period(hours=1)"))
    now = int(time.time() * 1000)
    due = hourly.latest_at_or_before(now)
    three_ago = due - 3 * 3600_000
    record = protocol.ScheduleRun(
        app=app,
        fn="tick",
        schedule=hourly.as_record(),
        tick_ms=three_ago,
        id=protocol.schedule_invocation_id(app, "tick", three_ago),
        digest="0" * 64,
        node="gone",
        submitted=three_ago / 1000,
    )
    client.run(client.assets.schedules.put(protocol.schedule_key(app, "tick"), record.as_json()))

    async def start() -> Scheduler:
        scheduler = Scheduler(Host(client))
        registry = await client.registry()
        poll_until = time.monotonic() + 10
        while app not in registry.aliases and time.monotonic() < poll_until:
            await asyncio.sleep(0.05)
        await scheduler.start(registry)
        return scheduler

    scheduler = client.run(start())
    try:
        caught_up = protocol.schedule_invocation_id(app, "tick", due)
        assert client.result(caught_up, timeout=60) == "v1"
    finally:
        client.run(scheduler.stop())
        deploy(lattice, ticker(tmp_path / app, log, "off", None))
    assert [invocation for invocation, _ in runs(log)] == [caught_up]


def test_two_nodes_submitting_one_tick_make_one_run(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    """The race at every tick: a second node that read the record before the first wrote
    it submits the tick again, even after it ran; the work stream drops the repeat."""
    app = unique("race")
    log = tmp_path / "runs.log"
    hourly = sp.Period(hours=1)
    deploy(lattice, ticker(tmp_path / app, log, "v1", "sp.Period(hours=1)"))
    key = (app, "tick")
    due = hourly.latest_at_or_before(int(time.time() * 1000)) - 5 * 3600_000  # nobody's tick
    only = protocol.schedule_invocation_id(app, "tick", due)
    first, second = Scheduler(Host(client, "n1")), Scheduler(Host(client, "n2"))

    async def start() -> None:
        registry = await client.registry()
        await first.start(registry)
        await second.start(registry)

    async def submit_again() -> dict[str, Any]:
        await client.assets.schedules.purge(protocol.schedule_key(*key))  # as if unread
        await second._submit(key, hourly, due)
        inv = second._invocation(second._wanted[key], due)
        message = work_message(inv, inv.id, [inv.encode()])
        ack = await client.nc.request(message.subject, message.data, headers=message.headers)
        answer: dict[str, Any] = json.loads(ack.data)
        return answer

    try:
        poll(lambda: app in client.run(client.registry()).aliases, "the mirror to see the app")
        client.run(start())
        client.run(first._submit(key, hourly, due))
        assert client.result(only, timeout=60) == "v1"  # ran, and its envelope was acked
        assert client.run(submit_again()).get("duplicate") is True
        record = client.run(client.assets.schedules.get(protocol.schedule_key(*key)))
        assert protocol.ScheduleRun.from_json(record.value).node == "n2"  # it did submit
    finally:
        client.run(first.stop())
        client.run(second.stop())
        deploy(lattice, ticker(tmp_path / app, log, "off", None))
    assert [invocation for invocation, _ in runs(log)] == [only]


FAILING = """
import superpose as sp


@sp.function(schedule=sp.Period(seconds=1))
def boom() -> None:
    raise ValueError("no report today")
"""


def test_a_failing_tick_is_dead_lettered_and_shown_failed(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    app = unique("failing")
    folder = write_app(tmp_path / app, {"jobs.py": FAILING})
    deploy(lattice, folder)
    try:
        row = poll(lambda: _failed_row(lattice, app), "a failed tick in `superpose schedules`")
    finally:
        deploy(lattice, ticker(folder, tmp_path / "unused.log", "off", None))
    error = row["last_run"]["error"]
    assert (error["kind"], error["type"], error["message"]) == (
        "raised",
        "ValueError",
        "no report today",
    )
    failed = superpose_cli("failed", "--app", app, "--json", url=lattice.url, check=True).stdout
    assert row["last_run"]["id"] in {letter["id"] for letter in json.loads(failed)}


def _failed_row(lattice: Lattice, app: str) -> dict[str, Any] | None:
    rows = schedules_json(lattice, app)
    last = rows[0]["last_run"] if rows else None
    return rows[0] if last and last["status"] == "failed" else None


def test_script_mode_ignores_schedules_and_runs_the_function_when_called(
    lattice: Lattice, client: sp.Client
) -> None:
    from fns import scheduled_in_script

    assert scheduled_in_script.schedule == sp.Period(seconds=1)
    assert scheduled_in_script.remote(41) == 42
    assert scheduled_in_script.spawn().result(timeout=60) == 2
    app = scheduled_in_script._target(client).app
    record = protocol.schedule_key(app, "scheduled_in_script")
    with pytest.raises(KeyNotFoundError):
        client.run(client.assets.schedules.get(record))  # no node scheduled it


def test_a_scheduled_function_with_needs_runs_on_a_node_meeting_them(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    """Its ticks go to its needs class's work subject, which only such nodes pull."""
    app = unique("placed")
    log = tmp_path / "runs.log"
    with scheduled(lattice, tmp_path / app, log, "sp.Period(seconds=1), needs={'node': '*'}"):
        poll(lambda: runs(log), "a tick of a function with needs")
    invocation = runs(log)[0][0]
    assert client.result(invocation, timeout=30) == "v1"
    assert protocol.needs_class({"node": "*"}) in client.run(client.registry()).placements
