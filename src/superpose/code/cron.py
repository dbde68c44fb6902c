"""Five-field cron expressions, in UTC: parsed, checked, and stepped through.

Our own small parser rather than a dependency: the subset people write
(``*``, lists, ranges, steps, month and weekday names, ``@hourly``-style
shortcuts) fits in a page, and an error can name the field at fault, which is
what a user with a typo needs. Times are whole minutes in UTC; nodes' clocks
should agree (NTP), since each node computes the same ticks from its own.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from superpose.errors import BadRequestError

MINUTE_MS = 60_000
DAY_MS = 24 * 3600 * 1000
SEARCH_DAYS = 28 * 366
"""How far ahead (or back) a tick is looked for: the rarest day an expression can ask
for, a 29th of February that is also a given weekday, comes round every 28 years."""

SHORTCUTS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]


FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day-of-month", 1, 31, {}),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 7, _WEEKDAYS),
)
LAYOUT = " ".join(f.name for f in FIELDS)


@dataclass(frozen=True)
class CronSpec:
    """The minutes a cron expression fires at, as sets of allowed values per field."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 is Sunday (7 is folded into it)."""
    days_or_weekdays: bool
    """Both day fields are restricted: a day matches if either does (cron's rule)."""

    def next_after(self, ms: int) -> int:
        """The first firing strictly after ``ms`` (epoch milliseconds)."""
        start = (ms // MINUTE_MS + 1) * MINUTE_MS
        for day_ms in self._days(start, step=1):
            for minute_ms in self._minutes_of_day():
                if day_ms + minute_ms >= start:
                    return day_ms + minute_ms
        raise BadRequestError(f"cron {self.expression!r} never fires")  # refused by parse

    def latest_at_or_before(self, ms: int) -> int:
        """The last firing at or before ``ms`` (epoch milliseconds)."""
        end = ms // MINUTE_MS * MINUTE_MS
        for day_ms in self._days(end, step=-1):
            for minute_ms in reversed(self._minutes_of_day()):
                if day_ms + minute_ms <= end:
                    return day_ms + minute_ms
        raise BadRequestError(f"cron {self.expression!r} never fires")  # refused by parse

    def _minutes_of_day(self) -> list[int]:
        return [(h * 60 + m) * MINUTE_MS for h in sorted(self.hours) for m in sorted(self.minutes)]

    def _days(self, ms: int, step: int) -> Iterator[int]:
        """Midnights (epoch ms) of the matching days from the day of ``ms`` on, one way."""
        day = datetime.fromtimestamp(ms // DAY_MS * DAY_MS / 1000, UTC)
        for _ in range(SEARCH_DAYS):
            if self._day_matches(day):
                yield int(day.timestamp()) * 1000
            day += timedelta(days=step)

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = (day.isoweekday() % 7) in self.weekdays
        return (in_days or in_weekdays) if self.days_or_weekdays else (in_days and in_weekdays)


def parse(expression: str) -> CronSpec:
    """A cron expression, or BadRequestError naming the field that is wrong."""
    if not isinstance(expression, str):
        raise BadRequestError(f"a cron expression is a string like '0 * * * *', got {expression!r}")
    text = SHORTCUTS.get(expression.strip().lower(), expression)
    parts = text.split()
    if len(parts) != len(FIELDS):
        raise BadRequestError(
            f"cron {expression!r} has {len(parts)} field(s); expected {len(FIELDS)}: "
            f"{LAYOUT} (UTC), e.g. '0 * * * *' for every hour"
        )
    sets = [_values(expression, field, part) for field, part in zip(FIELDS, parts, strict=True)]
    minutes, hours, days, months, weekdays = sets
    spec = CronSpec(
        expression=expression,
        minutes=frozenset(minutes),
        hours=frozenset(hours),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(d % 7 for d in weekdays),
        days_or_weekdays=not parts[2].startswith("*") and not parts[4].startswith("*"),
    )
    _check_fires(spec, parts)
    return spec


def _values(expression: str, field: _Field, part: str) -> set[int]:
    values: set[int] = set()
    for item in part.split(","):
        values.update(_item(expression, field, item))
    return values


def _item(expression: str, field: _Field, item: str) -> range:
    """One list item: ``*``, ``N``, ``A-B``, each with an optional ``/STEP``."""
    where = f"cron {expression!r}: {field.name} field"
    span, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) < 1:
            raise BadRequestError(f"{where}: step {step_text!r} in {item!r} is not a number ≥ 1")
        step = int(step_text)
    if span == "*":
        return range(field.low, field.high + 1, step)
    low_text, dash, high_text = span.partition("-")
    low = _number(where, field, low_text, item)
    high = _number(where, field, high_text, item) if dash else (field.high if slash else low)
    if high < low:
        raise BadRequestError(f"{where}: range {item!r} runs backwards ({low} > {high})")
    return range(low, high + 1, step)


def _number(where: str, field: _Field, text: str, item: str) -> int:
    value = field.names.get(text.lower()) if text.isalpha() else None
    if value is None:
        if not text.isdigit():
            raise BadRequestError(f"{where}: {item!r} is not a number, range, list or step")
        value = int(text)
    if not field.low <= value <= field.high:
        inside = f" (in {item!r})" if item != text else ""
        raise BadRequestError(f"{where}: {text!r} is out of range {field.low}-{field.high}{inside}")
    return value


def _check_fires(spec: CronSpec, parts: list[str]) -> None:
    """Refuse days that no month has (``0 0 31 2 *``): the expression would never fire."""
    if spec.days_or_weekdays or parts[2].startswith("*"):
        return
    longest = {month: calendar.monthrange(2000, month)[1] for month in spec.months}  # leap year
    if not any(day <= longest[month] for month in spec.months for day in spec.days):
        raise BadRequestError(
            f"cron {spec.expression!r} never fires: none of its months has day "
            f"{min(spec.days)} (fields: {LAYOUT})"
        )
