"""When the lattice runs a deployed function by itself: ``sp.Period`` and ``sp.Cron``.

A schedule is written in the decorator (``@sp.function(schedule=sp.Period(minutes=5))``),
checked there and again by deploy, which records it in the version's function options
as a small JSON map (``{"period_s": 300}`` or ``{"cron": "0 * * * *"}``). Nodes read it
back from the registry and compute the same ticks from it, so every node agrees on
when a tick is due without talking to the others. All times are epoch milliseconds,
UTC; a period's ticks are aligned to the epoch, not to the deploy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from superpose.code import cron
from superpose.errors import BadRequestError
from superpose.protocol import Version

MIN_PERIOD_S = 1.0
"""The shortest period: ticks are persisted and de-duplicated through JetStream, and
a sub-second period would spend the lattice's fsyncs on bookkeeping."""
_UNITS_S = (("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1))


class Schedule:
    """What nodes need of a schedule: its ticks, and how it is recorded."""

    def next_after(self, ms: int) -> int:
        """The first tick strictly after ``ms``."""
        raise NotImplementedError

    def latest_at_or_before(self, ms: int) -> int:
        """The last tick at or before ``ms``."""
        raise NotImplementedError

    def as_record(self) -> dict[str, Any]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.as_record() == other.as_record()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.as_record().items())))


class Period(Schedule):
    """Run every so often: ``sp.Period(seconds=30)``, ``sp.Period(hours=1, minutes=30)``.

    Ticks fall on whole multiples of the period since the Unix epoch (UTC), so
    ``Period(hours=1)`` runs on the hour and ``Period(days=1)`` at midnight UTC,
    whenever the app was deployed.
    """

    def __init__(
        self, *, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0
    ) -> None:
        given = {"days": days, "hours": hours, "minutes": minutes, "seconds": seconds}
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequestError(f"{name}= of sp.Period takes a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise BadRequestError(f"{name}= of sp.Period must be a number ≥ 0, got {value!r}")
        total_s = sum(given[name] * unit for name, unit in _UNITS_S)
        if total_s < MIN_PERIOD_S:
            raise BadRequestError(
                f"a period of {total_s:g} s is too short for sp.Period: it is at least "
                f"{MIN_PERIOD_S:g} second (e.g. sp.Period(seconds=30))"
            )
        self.period_ms = round(total_s * 1000)

    @property
    def seconds(self) -> float:
        return self.period_ms / 1000

    def next_after(self, ms: int) -> int:
        return (ms // self.period_ms + 1) * self.period_ms

    def latest_at_or_before(self, ms: int) -> int:
        return ms // self.period_ms * self.period_ms

    def as_record(self) -> dict[str, Any]:
        return {"period_s": self.seconds}

    def __repr__(self) -> str:
        left, parts = self.seconds, []
        for name, unit in _UNITS_S:
            count = left // unit if name != "seconds" else left
            if count:
                parts.append(f"{name}={count:g}")
                left -= count * unit
        return f"Period({', '.join(parts)})"


class Cron(Schedule):
    """Run at the minutes a cron expression names, in UTC: ``sp.Cron("0 * * * *")``.

    Five fields (minute, hour, day of the month, month, day of the week) with
    ``*``, lists (``1,15``), ranges (``1-5``), steps (``*/10``), month and weekday
    names (``jan``, ``mon``), or a shortcut (``@hourly``, ``@daily``, ``@weekly``,
    ``@monthly``, ``@yearly``). A malformed expression is refused here, naming the
    field at fault.
    """

    def __init__(self, expression: str) -> None:
        self._spec = cron.parse(expression)
        self.expression = expression

    def next_after(self, ms: int) -> int:
        return self._spec.next_after(ms)

    def latest_at_or_before(self, ms: int) -> int:
        return self._spec.latest_at_or_before(ms)

    def as_record(self) -> dict[str, Any]:
        return {"cron": self.expression}

    def __repr__(self) -> str:
        return f"Cron({self.expression!r})"


def check_schedule(schedule: object) -> Schedule | None:
    """A decorator's ``schedule=``: a Period, a Cron, or None."""
    if schedule is None or isinstance(schedule, Schedule):
        return schedule
    raise BadRequestError(
        f"schedule= takes sp.Period(...) or sp.Cron('...'), got {schedule!r} "
        "(e.g. schedule=sp.Period(minutes=5) or schedule=sp.Cron('0 * * * *'))"
    )


def unscheduled_reason(fn: str, required: Iterable[str]) -> str | None:
    """Why ``fn`` cannot be scheduled (a parameter it needs), or None if it can."""
    missing = list(required)
    if not missing:
        return None
    names = ", ".join(repr(name) for name in missing)
    return (
        f"{fn} has a schedule, which calls it with no arguments, but its parameter(s) "
        f"{names} have no default: give them defaults or drop schedule="
    )


def from_record(record: object) -> Schedule:
    """A schedule as deploy recorded it; BadRequestError if it is not one."""
    if isinstance(record, Mapping):
        if set(record) == {"period_s"}:
            return Period(seconds=record["period_s"])
        if set(record) == {"cron"}:
            return Cron(record["cron"])
    raise BadRequestError(f"not a recorded schedule: {record!r}")


@dataclass(frozen=True)
class Scheduled:
    """One function that ``latest`` of its app runs on a schedule."""

    app: str
    fn: str
    schedule: Schedule
    version: Version

    @property
    def key(self) -> tuple[str, str]:
        return (self.app, self.fn)


def scheduled_in(latest: Iterable[Version]) -> list[Scheduled]:
    """The scheduled functions of these versions (each app's ``latest``), by app and name.

    A recorded schedule that does not read back (written by hand, or by another
    version of superpose) is left out rather than stopping the others.
    """
    found: list[Scheduled] = []
    for version in latest:
        for fn, spec in sorted(version.functions.items()):
            record = (spec.get("options") or {}).get("schedule")
            if record is None:
                continue
            try:
                schedule = from_record(record)
            except BadRequestError:
                continue
            found.append(Scheduled(version.app, fn, schedule, version))
    return sorted(found, key=lambda s: s.key)
