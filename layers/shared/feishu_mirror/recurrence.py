"""Feishu event times and recurrence rules, expanded in the event's own time zone (pure: no I/O).

Times come as Feishu writes them: ``{"timestamp": "<unix seconds>", "timezone": "<IANA>"}`` for a timed
event and ``{"date": "YYYY-MM-DD", "timezone": ...}`` for an all-day one (its end date is exclusive: a
one-day event on 9 March ends on the date 10 March). A recurrence is one RFC 5545 ``RRULE``
(``FREQ=WEEKLY;INTERVAL=1;BYDAY=MO``, maybe prefixed ``RRULE:``, with ``UNTIL`` or ``COUNT``).

Expansion uses ``dateutil.rrule`` on *local wall times* (the rule's dates and times are those of the
event's zone, as RFC 5545 says), and turns each wall time into an instant with ``zoneinfo``:

- **Across DST** an occurrence keeps its wall time (a 10:00 weekly meeting stays at 10:00 local) and its
  length in seconds (a one-hour meeting lasts one hour); an all-day occurrence lasts whole dates.
- **A wall time that does not exist** (02:30 on the night clocks spring from 02:00 to 03:00) is read
  with the offset in force before the gap, so it happens at 03:30 of the new offset, as calendar
  clients show it (RFC 5545 §3.3.5 reads such a time the same way; §3.3.10 would drop the instance,
  which silently loses a meeting, so this module does not).
- **A wall time that happens twice** (01:30 on the night clocks fall back) is the first of the two.
- The event's own start (``DTSTART``) is always an occurrence, even where the rule would not produce
  it (RFC 5545 leaves that case undefined).

A rule that cannot be read raises ``InvalidRecurrence``; a time that cannot be read raises
``InvalidEventTime``; neither ever escapes as anything else. Rules more frequent than hourly, and rules
that can never produce an occurrence (``BYMONTH=2;BYMONTHDAY=30``), are refused, so an expansion is
always bounded (dateutil would otherwise search until the year 9999).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import rrule as du

DAY = 86400
FOREVER = 253402300799  # 9999-12-31T23:59:59Z: the end of a series that never ends
# An instant's wall time differs from UTC by at most ~26 h in any zone's history: a search in wall time
# that widens its bounds by this much cannot miss an occurrence.
WALL_SLACK = 2 * DAY
MAX_OCCURRENCES_PER_SERIES = 10_000  # an hourly series over a 366-day window is 8,784
MAX_COUNT_FOR_EXACT_END = 10_000  # a longer COUNT is treated as open-ended when bounding a series
UTC_ZONE = ZoneInfo("UTC")

Frequency = Literal[0, 1, 2, 3, 4, 5, 6]  # dateutil's YEARLY … SECONDLY
_FREQUENCIES: dict[str, Frequency] = {
    "YEARLY": du.YEARLY,
    "MONTHLY": du.MONTHLY,
    "WEEKLY": du.WEEKLY,
    "DAILY": du.DAILY,
    "HOURLY": du.HOURLY,
}
_WEEKDAYS = {"MO": du.MO, "TU": du.TU, "WE": du.WE, "TH": du.TH, "FR": du.FR, "SA": du.SA, "SU": du.SU}
_BYDAY = re.compile(r"([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)")
_UNTIL = re.compile(r"(\d{8})(?:T(\d{6})(Z?))?")
# name in the RRULE → (dateutil keyword, smallest, largest, zero allowed)
_INT_LISTS = {
    "BYMONTH": ("bymonth", 1, 12, False),
    "BYMONTHDAY": ("bymonthday", -31, 31, False),
    "BYYEARDAY": ("byyearday", -366, 366, False),
    "BYWEEKNO": ("byweekno", -53, 53, False),
    "BYSETPOS": ("bysetpos", -366, 366, False),
    "BYHOUR": ("byhour", 0, 23, True),
    "BYMINUTE": ("byminute", 0, 59, True),
    "BYSECOND": ("bysecond", 0, 59, True),
}
# Parts that can make a rule produce nothing at all (a 30 February): such rules are probed first.
_RESTRICTIVE = frozenset({"bymonthday", "byyearday", "byweekno", "bysetpos"})


class InvalidEventTime(ValueError):
    """A ``start_time`` / ``end_time`` without a usable ``timestamp`` or ``date``."""


class InvalidRecurrence(ValueError):
    """A ``recurrence`` that is not an RRULE this module can expand (the message says why)."""


class TooManyOccurrences(ValueError):
    """One series has more than ``MAX_OCCURRENCES_PER_SERIES`` occurrences in the window."""


@lru_cache(maxsize=1024)
def zone(name: object) -> ZoneInfo:
    """The IANA zone called ``name``; UTC when it is missing or unknown (Feishu always sends one)."""
    if not isinstance(name, str) or not name or len(name) > 64:
        return UTC_ZONE
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return UTC_ZONE


def local_epoch(wall: datetime, tz: ZoneInfo) -> int:
    """The instant of a naive wall time in ``tz``: a nonexistent time is read with the offset before
    the gap, an ambiguous one is the first of the two (``fold=0``, PEP 495)."""
    return int(wall.replace(tzinfo=tz, fold=0).timestamp())


def wall_time(epoch: int, tz: ZoneInfo) -> datetime:
    """The naive wall time in ``tz`` of an instant."""
    return datetime.fromtimestamp(epoch, tz).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class EventTime:
    """A point of an event: an instant (``epoch``) and the zone it is shown in; for an all-day event
    also the ``day``, whose instant is that date's first moment in ``tz``."""

    epoch: int
    tz: ZoneInfo = field(compare=False)
    day: date | None = None

    @property
    def all_day(self) -> bool:
        """True for an all-day (date) time."""
        return self.day is not None

    @classmethod
    def on_day(cls, day: date, tz: ZoneInfo) -> EventTime:
        """An all-day time: ``day`` in ``tz``."""
        return cls(local_epoch(datetime.combine(day, time()), tz), tz, day)

    def rfc3339(self, tz: ZoneInfo | None = None) -> str:
        """``2026-03-09T10:00:00+08:00`` in ``tz`` (default: the event's zone); ``2026-03-09`` for a day."""
        if self.day is not None:
            return self.day.isoformat()
        return datetime.fromtimestamp(self.epoch, tz or self.tz).isoformat()


def parse_event_time(raw: object) -> EventTime:
    """A Feishu ``start_time``/``end_time`` object; raises ``InvalidEventTime``."""
    if not isinstance(raw, Mapping):
        raise InvalidEventTime("not an object")
    tz = zone(raw.get("timezone"))
    stamp = raw.get("timestamp")
    if isinstance(stamp, str) and stamp.isdigit() and len(stamp) <= 12:
        stamp = int(stamp)
    if isinstance(stamp, int) and not isinstance(stamp, bool) and 0 <= stamp <= FOREVER:
        return EventTime(stamp, tz)
    text = raw.get("date")
    if isinstance(text, str) and len(text) == 10:
        try:
            return EventTime.on_day(date.fromisoformat(text), tz)
        except (ValueError, OverflowError) as exc:
            raise InvalidEventTime(f"bad date {text!r}") from exc
    raise InvalidEventTime("neither a timestamp nor a date")


# ------------------------------------------------------------------------------------ rules
@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed RRULE: dateutil's keywords (without ``dtstart``, ``count`` and ``until``) and those two."""

    text: str
    freq: Frequency
    interval: int
    count: int | None
    until: tuple[date, time | None, bool] | None  # (date, time or None for a date, in UTC)
    by: tuple[tuple[str, Any], ...]

    def until_wall(self, tz: ZoneInfo, all_day: bool) -> datetime | None:
        """The last wall time an occurrence may start at, in ``tz``: a UTC ``UNTIL`` is converted; a
        date (or any ``UNTIL`` of an all-day event) includes that whole day."""
        if self.until is None:
            return None
        day, clock, in_utc = self.until
        if clock is None:
            return datetime.combine(day, time(23, 59, 59))
        moment = datetime.combine(day, clock)
        if in_utc:
            moment = wall_time(int(moment.replace(tzinfo=UTC).timestamp()), tz)
        return datetime.combine(moment.date(), time(23, 59, 59)) if all_day else moment


def _int(text: str, name: str, low: int, high: int, zero: bool = True) -> int:
    if not re.fullmatch(r"[+-]?\d{1,7}", text):
        raise InvalidRecurrence(f"{name} must be a number")
    value = int(text)
    if not low <= value <= high or (value == 0 and not zero):
        raise InvalidRecurrence(f"{name} out of range")
    return value


def _by_parts(parts: dict[str, str]) -> dict[str, Any]:
    """``WKST`` and the ``BY…`` parts as dateutil keywords (each taken out of ``parts``)."""
    by: dict[str, Any] = {}
    if "WKST" in parts:
        start = _WEEKDAYS.get(parts.pop("WKST"))
        if start is None:
            raise InvalidRecurrence("WKST must be a weekday")
        by["wkst"] = start
    if "BYDAY" in parts:
        days = []
        for token in parts.pop("BYDAY").split(","):
            found = _BYDAY.fullmatch(token.strip())
            if not found:
                raise InvalidRecurrence(f"bad BYDAY {token[:10]!r}")
            n = _int(found.group(1), "BYDAY", -53, 53, zero=False) if found.group(1) else None
            days.append(_WEEKDAYS[found.group(2)](n) if n else _WEEKDAYS[found.group(2)])
        by["byweekday"] = tuple(days)
    for name, (keyword, low, high, zero) in _INT_LISTS.items():
        if name in parts:
            values = tuple(_int(v.strip(), name, low, high, zero) for v in parts.pop(name).split(","))
            by[keyword] = values
    return by


@lru_cache(maxsize=4096)
def parse_rule(text: object) -> Rule:
    """Parse Feishu's ``recurrence``; raises ``InvalidRecurrence`` for anything but one valid RRULE.

    Lenient about an ``RRULE:`` prefix, case, spaces and a trailing ``;``; strict about everything else.
    """
    if not isinstance(text, str) or not text.strip() or len(text) > 1000:
        raise InvalidRecurrence("empty or too long")
    body = text.strip()
    if body[:6].upper() == "RRULE:":
        body = body[6:]
    parts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in body.split(";"))):
        name, sep, value = part.partition("=")
        name = name.strip().upper()
        if not sep or not value.strip() or name in parts:
            raise InvalidRecurrence(f"malformed part {part[:40]!r}")
        parts[name] = value.strip().upper()
    freq = _FREQUENCIES.get(parts.pop("FREQ", ""))
    if freq is None:
        raise InvalidRecurrence("FREQ must be YEARLY, MONTHLY, WEEKLY, DAILY or HOURLY")
    interval = _int(parts.pop("INTERVAL", "1"), "INTERVAL", 1, 10_000, zero=False)
    count = _int(parts.pop("COUNT"), "COUNT", 1, 1_000_000, zero=False) if "COUNT" in parts else None
    until = None
    if "UNTIL" in parts:
        found = _UNTIL.fullmatch(parts.pop("UNTIL"))
        if not found:
            raise InvalidRecurrence("UNTIL must be YYYYMMDD or YYYYMMDDTHHMMSS[Z]")
        try:
            day = datetime.strptime(found.group(1), "%Y%m%d").date()
            clock = datetime.strptime(found.group(2), "%H%M%S").time() if found.group(2) else None
        except ValueError as exc:
            raise InvalidRecurrence("UNTIL is not a real date") from exc
        until = (day, clock, bool(found.group(3)))
    by = _by_parts(parts)
    if parts:
        raise InvalidRecurrence(f"unsupported part {sorted(parts)[0]}")
    rule = Rule(body, freq, interval, count, until, tuple(sorted(by.items())))
    if freq == du.HOURLY and _restrictive(rule):
        raise InvalidRecurrence("an hourly rule may not select days of the month or year, week numbers or positions")
    return rule


def _defaults(rule: Rule, origin: datetime) -> dict[str, Any]:
    """The rule's keywords with dateutil's defaults taken from ``origin`` made explicit, so the rule
    can start from another ``dtstart`` and still mean the same (``rrule.__init__``'s own defaults)."""
    kw = dict(rule.by)
    if not {"byweekno", "byyearday", "bymonthday", "byweekday"} & kw.keys():
        if rule.freq == du.YEARLY:
            kw.setdefault("bymonth", (origin.month,))
            kw["bymonthday"] = (origin.day,)
        elif rule.freq == du.MONTHLY:
            kw["bymonthday"] = (origin.day,)
        elif rule.freq == du.WEEKLY:
            kw["byweekday"] = (origin.weekday(),)
    if rule.freq < du.HOURLY:
        kw.setdefault("byhour", (origin.hour,))
    kw.setdefault("byminute", (origin.minute,))
    kw.setdefault("bysecond", (origin.second,))
    return kw


def _period_start(rule: Rule, origin: datetime, periods: int) -> datetime:
    """The start of the period ``periods`` whole periods after ``origin``'s (0: ``origin`` itself)."""
    if periods <= 0:
        return origin
    if rule.freq == du.YEARLY:
        return origin.replace(year=origin.year + periods, month=1, day=1)
    if rule.freq == du.MONTHLY:
        months = origin.year * 12 + origin.month - 1 + periods
        return origin.replace(year=months // 12, month=months % 12 + 1, day=1)
    step = {du.WEEKLY: timedelta(weeks=1), du.DAILY: timedelta(days=1), du.HOURLY: timedelta(hours=1)}[rule.freq]
    return origin + step * periods


def _periods_between(rule: Rule, origin: datetime, later: datetime) -> int:
    """Whole periods of the rule's frequency from ``origin`` to ``later`` (never negative)."""
    if later <= origin:
        return 0
    if rule.freq == du.YEARLY:
        return later.year - origin.year
    if rule.freq == du.MONTHLY:
        return (later.year - origin.year) * 12 + later.month - origin.month
    seconds = {du.WEEKLY: 7 * DAY, du.DAILY: DAY, du.HOURLY: 3600}[rule.freq]
    return int((later - origin).total_seconds() // seconds)


def _dateutil(rule: Rule, origin: datetime, near: datetime | None = None) -> du.rrule:
    """dateutil's rule from ``origin``; without ``COUNT`` it starts instead at a period boundary
    (aligned to ``INTERVAL``) shortly before ``near``, so a series that began years ago is not walked
    occurrence by occurrence."""
    dtstart = origin
    if near is not None and rule.count is None:
        skip = _periods_between(rule, origin, near) // rule.interval - 1
        if skip > 0:
            try:
                dtstart = _period_start(rule, origin, skip * rule.interval)
            except (ValueError, OverflowError):
                dtstart = origin
    kw = _defaults(rule, origin)
    return du.rrule(rule.freq, dtstart=dtstart, interval=rule.interval, count=rule.count, cache=False, **kw)


def _restrictive(rule: Rule) -> bool:
    """True when the rule has parts that could select nothing at all (a 30 February, a sixth Monday)."""
    by = dict(rule.by)
    return bool(_RESTRICTIVE & by.keys()) or any(getattr(d, "n", None) for d in by.get("byweekday", ()))


@lru_cache(maxsize=4096)
def _satisfiable(rule: Rule, origin: datetime) -> bool:
    """Whether the rule, with ``origin``'s defaults, produces anything: probed over the last years before
    9999, where dateutil's search for an occurrence that never comes ends quickly."""
    years = 8 if rule.freq == du.DAILY else 28
    probe_start = datetime(9999 - years, 1, 1, origin.hour, origin.minute, origin.second)
    probe = du.rrule(rule.freq, dtstart=probe_start, cache=False, **_defaults(rule, origin))
    return next(iter(probe), None) is not None


# ------------------------------------------------------------------------------------ series
@dataclass(frozen=True, slots=True)
class Occurrence:
    """One occurrence of an event: when it starts and ends."""

    start: EventTime
    end: EventTime


def overlaps(start: int, end: int, window_from: int, window_to: int) -> bool:
    """True when ``[start, end)`` meets ``[window_from, window_to)``; a zero-length event counts
    when it starts inside the window."""
    return start < window_to and max(end, start + 1) > window_from


@dataclass(frozen=True, slots=True)
class Series:
    """A recurring event: its first occurrence's times and its rule."""

    start: EventTime
    end: EventTime
    rule: Rule

    @classmethod
    def of(cls, start: EventTime, end: EventTime, recurrence: object) -> Series:
        """The series; raises ``InvalidRecurrence`` (also for a rule that can never occur)."""
        rule = parse_rule(recurrence)
        origin = cls._origin_of(start)
        if _restrictive(rule) and not _satisfiable(rule, origin):
            raise InvalidRecurrence("the rule never produces an occurrence")
        return cls(start, end, rule)

    @staticmethod
    def _origin_of(start: EventTime) -> datetime:
        return datetime.combine(start.day, time()) if start.day is not None else wall_time(start.epoch, start.tz)

    @property
    def origin(self) -> datetime:
        """The first occurrence's wall time (midnight for an all-day event)."""
        return self._origin_of(self.start)

    @property
    def duration(self) -> int:
        """Seconds from an occurrence's start to its end (for all-day events: the days, as seconds)."""
        if self.start.day is not None:
            return self.days * DAY
        return max(0, self.end.epoch - self.start.epoch)

    @property
    def days(self) -> int:
        """Dates an all-day occurrence covers (at least one)."""
        if self.start.day is None or self.end.day is None:
            return 1
        return max(1, (self.end.day - self.start.day).days)

    def _occurrence(self, wall: datetime) -> Occurrence:
        tz = self.start.tz
        if self.start.day is not None:
            first = wall.date()
            return Occurrence(EventTime.on_day(first, tz), EventTime.on_day(first + timedelta(days=self.days), tz))
        begin = local_epoch(wall, tz)
        return Occurrence(EventTime(begin, tz), EventTime(begin + self.duration, tz))

    def _walls(self, low: datetime, high: datetime) -> Iterator[datetime]:
        """Occurrence wall times in ``[low, high]``, the event's own start included, in order."""
        until = self.rule.until_wall(self.start.tz, self.start.all_day)
        last = min(high, until) if until else high
        origin = self.origin
        found = _dateutil(self.rule, origin, low).between(low, last, inc=True) if last >= low else []
        if low <= origin <= high and (not found or found[0] != origin):
            found = sorted({origin, *found})
        yield from found

    def occurrences(self, window_from: int, window_to: int) -> list[Occurrence]:
        """Every occurrence overlapping ``[window_from, window_to)``, in order; raises
        ``TooManyOccurrences``."""
        tz = self.start.tz
        low = wall_time(max(0, window_from - self.duration - WALL_SLACK), tz)
        high = wall_time(min(FOREVER - 2 * WALL_SLACK, window_to + WALL_SLACK), tz)
        found = []
        for n, wall in enumerate(self._walls(low, high)):
            if n >= MAX_OCCURRENCES_PER_SERIES + 8:
                raise TooManyOccurrences(f"more than {MAX_OCCURRENCES_PER_SERIES} occurrences of one series")
            occurrence = self._occurrence(wall)
            if overlaps(occurrence.start.epoch, occurrence.end.epoch, window_from, window_to):
                found.append(occurrence)
        if len(found) > MAX_OCCURRENCES_PER_SERIES:
            raise TooManyOccurrences(f"more than {MAX_OCCURRENCES_PER_SERIES} occurrences of one series")
        return found

    def last_end(self) -> int:
        """An upper bound of when the last occurrence ends (``FOREVER`` for an open-ended series):
        exact for a ``COUNT`` up to ``MAX_COUNT_FOR_EXACT_END``, a little generous for an ``UNTIL``."""
        tz = self.start.tz
        bounds = []
        count = self.rule.count
        if count is not None and count <= MAX_COUNT_FOR_EXACT_END:
            walls = list(_dateutil(self.rule, self.origin))
            if walls:
                bounds.append(self._occurrence(walls[-1]).end.epoch)
        until = self.rule.until_wall(tz, self.start.all_day)
        if until is not None:
            bounds.append(local_epoch(until, tz) + self.duration + WALL_SLACK)
        own = self._occurrence(self.origin).end.epoch
        return max(own, min(bounds)) if bounds else FOREVER
