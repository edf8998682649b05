"""Recurrence expansion against an independent, naive enumeration, and the cases that need saying.

The naive enumerator walks the calendar one local date at a time and decides by plain arithmetic
whether a date matches the rule (DAILY, WEEKLY with BYDAY, MONTHLY and YEARLY on the start's day, with
INTERVAL, COUNT and UNTIL); it turns wall times into instants by searching the zone's offsets around
them, not with ``fold``. Zones and start times are drawn to hit DST changes (02:30 in New York on the
spring-forward night, Lord Howe's half-hour shift, Havana's midnight change).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from feishu_mirror.recurrence import (
    FOREVER,
    EventTime,
    InvalidEventTime,
    InvalidRecurrence,
    Series,
    TooManyOccurrences,
    parse_event_time,
    parse_rule,
)

ZONES = (
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Shanghai",
    "America/Sao_Paulo",
    "Pacific/Chatham",
    "America/Havana",
    "Asia/Kolkata",
    "UTC",
)
WALL_TIMES = (
    time(0, 0),
    time(0, 30),
    time(1, 0),
    time(1, 30),
    time(2, 0),
    time(2, 30),
    time(3, 0),
    time(9, 0),
    time(23, 30),
)
DAY = 86400


# ------------------------------------------------------------------------------ the naive side
def naive_instant(wall: datetime, tz: ZoneInfo) -> int:
    """The instant of a wall time, by search: the earliest instant whose wall time it is; in a gap,
    the wall time read with the smaller (pre-gap) of the offsets around it."""
    guess = int(wall.replace(tzinfo=UTC).timestamp())
    offsets = {
        int(datetime.fromtimestamp(guess + hours * 3600, tz).utcoffset().total_seconds())  # type: ignore[union-attr]
        for hours in range(-48, 49)
    }
    valid = [guess - off for off in offsets if datetime.fromtimestamp(guess - off, tz).replace(tzinfo=None) == wall]
    return min(valid) if valid else guess - min(offsets)


@dataclass(frozen=True)
class Case:
    """A drawn series: its zone, first wall time, rule (as parts and as text), length and a window."""

    tz: ZoneInfo
    first: datetime
    freq: str
    interval: int
    weekdays: frozenset[int]
    count: int | None
    until_wall: datetime | None
    rule: str
    duration: int
    window: tuple[int, int]


def _matches(case: Case, first: date, day: date) -> bool:
    if day < first:
        return False
    if case.freq == "DAILY":
        return (day - first).days % case.interval == 0
    if case.freq == "WEEKLY":
        monday = first - timedelta(days=first.weekday())
        return day.weekday() in case.weekdays and ((day - monday).days // 7) % case.interval == 0
    if case.freq == "MONTHLY":
        months = (day.year - first.year) * 12 + day.month - first.month
        return day.day == first.day and months % case.interval == 0
    return (day.month, day.day) == (first.month, first.day) and (day.year - first.year) % case.interval == 0


def naive_walls(case: Case, first: datetime, until: datetime | None) -> list[datetime]:
    """Occurrence wall times, one local date at a time, up to two days past the window."""
    last_day = datetime.fromtimestamp(case.window[1], UTC).date() + timedelta(days=2)
    found: list[datetime] = []
    day = first.date()
    while day <= last_day:
        if _matches(case, first.date(), day):
            wall = datetime.combine(day, first.time())
            if until is not None and wall > until:
                break
            found.append(wall)
            if case.count is not None and len(found) >= case.count:
                break
        day += timedelta(days=1)
    return found


def _rule_text(freq: str, interval: int, weekdays: frozenset[int], count: int | None, until: str | None) -> str:
    names = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
    parts = [f"FREQ={freq}", f"INTERVAL={interval}"]
    if freq == "WEEKLY":
        parts.append("BYDAY=" + ",".join(names[d] for d in sorted(weekdays)))
    if count is not None:
        parts.append(f"COUNT={count}")
    if until is not None:
        parts.append(f"UNTIL={until}")
    return ";".join(parts)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    tz = ZoneInfo(draw(st.sampled_from(ZONES)))
    first_day = draw(st.dates(min_value=date(2001, 1, 1), max_value=date(2030, 12, 31)))
    first = datetime.combine(first_day, draw(st.sampled_from(WALL_TIMES)))
    freq = draw(st.sampled_from(["DAILY", "WEEKLY", "MONTHLY", "YEARLY"]))
    interval = draw(st.integers(1, 4))
    weekdays = frozenset({first_day.weekday()} | draw(st.sets(st.integers(0, 6), max_size=3)))
    end = draw(st.sampled_from(["none", "count", "until_local", "until_utc"]))
    count = draw(st.integers(1, 40)) if end == "count" else None
    until_wall = until_text = None
    if end.startswith("until"):
        until_wall = first + timedelta(days=draw(st.integers(0, 900)), minutes=draw(st.integers(0, 1439)))
        if end == "until_local":
            until_text = until_wall.strftime("%Y%m%dT%H%M%S")
        else:  # a UTC UNTIL: the same instant, which the series turns back into the zone's wall time
            instant = naive_instant(until_wall, tz)
            until_text = datetime.fromtimestamp(instant, UTC).strftime("%Y%m%dT%H%M%SZ")
            until_wall = datetime.fromtimestamp(instant, tz).replace(tzinfo=None)
    window_from = naive_instant(first, tz) + draw(st.integers(-30, 1500)) * DAY + draw(st.integers(0, DAY))
    return Case(
        tz=tz,
        first=first,
        freq=freq,
        interval=interval,
        weekdays=weekdays,
        count=count,
        until_wall=until_wall,
        rule=_rule_text(freq, interval, weekdays, count, until_text),
        duration=draw(st.sampled_from([0, 900, 3600, 5400, 4 * 3600, 9 * 3600])),
        window=(window_from, window_from + draw(st.integers(1, 45)) * DAY),
    )


# ------------------------------------------------------------------------------ properties
NEW_YORK_0230 = Case(
    tz=ZoneInfo("America/New_York"),
    first=datetime(2026, 1, 4, 2, 30),
    freq="WEEKLY",
    interval=1,
    weekdays=frozenset({6}),
    count=None,
    until_wall=None,
    rule="FREQ=WEEKLY;INTERVAL=1;BYDAY=SU",
    duration=3600,
    window=(int(datetime(2026, 2, 20, tzinfo=UTC).timestamp()), int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())),
)


@settings(max_examples=250, deadline=None)
@given(cases())
@example(NEW_YORK_0230)
def test_timed_series_match_a_day_by_day_enumeration(case: Case) -> None:
    # GIVEN a random rule, zone, start and window (and New York's weekly 02:30 across both changes)
    window_from, window_to = case.window
    start = naive_instant(case.first, case.tz)
    series = Series.of(EventTime(start, case.tz), EventTime(start + case.duration, case.tz), case.rule)
    # WHEN the series is expanded, and the same rule is enumerated date by date
    got = [(o.start.epoch, o.end.epoch) for o in series.occurrences(window_from, window_to)]
    expected = []
    for wall in naive_walls(case, case.first, case.until_wall):
        begin = naive_instant(wall, case.tz)
        if begin < window_to and max(begin + case.duration, begin + 1) > window_from:
            expected.append((begin, begin + case.duration))
    # THEN both list the same occurrences, at the same instants
    assert got == expected


@settings(max_examples=120, deadline=None)
@given(cases(), st.integers(1, 3))
def test_all_day_series_match_a_day_by_day_enumeration(case: Case, days: int) -> None:
    # GIVEN an all-day series of 1 to 3 dates per occurrence
    first = datetime.combine(case.first.date(), time())
    start = EventTime.on_day(first.date(), case.tz)
    series = Series.of(start, EventTime.on_day(first.date() + timedelta(days=days), case.tz), case.rule)
    window_from, window_to = case.window
    # WHEN it is expanded
    got = [(o.start.day, o.end.day) for o in series.occurrences(window_from, window_to)]
    # THEN the dates are those of the enumeration whose local midnights meet the window (an UNTIL
    # includes its whole date)
    until = datetime.combine(case.until_wall.date(), time(23, 59, 59)) if case.until_wall else None
    expected = [
        (w.date(), w.date() + timedelta(days=days))
        for w in naive_walls(case, first, until)
        if naive_instant(w, case.tz) < window_to and naive_instant(w + timedelta(days=days), case.tz) > window_from
    ]
    assert got == expected


# ------------------------------------------------------------------------------ DST, decided
def _at(tz: str, year: int, month: int, day: int, hour: int, *, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp())


def test_a_nonexistent_local_time_happens_an_hour_later_in_the_new_offset() -> None:
    # GIVEN a weekly Sunday 02:30 meeting in New York; clocks spring from 02:00 to 03:00 on 8 March 2026
    ny = ZoneInfo("America/New_York")
    first = _at("America/New_York", 2026, 3, 1, 2, minute=30)
    series = Series.of(EventTime(first, ny), EventTime(first + 3600, ny), "FREQ=WEEKLY;BYDAY=SU")
    # WHEN the three Sundays around the change are expanded
    got = [o.start.rfc3339() for o in series.occurrences(first, first + 15 * DAY)]
    # THEN the meeting is not dropped: on the changeover day it starts at 03:30 EDT (02:30 read with EST)
    assert got == ["2026-03-01T02:30:00-05:00", "2026-03-08T03:30:00-04:00", "2026-03-15T02:30:00-04:00"]


def test_an_ambiguous_local_time_is_the_first_of_the_two() -> None:
    # GIVEN a daily 01:30 event in New York; on 1 November 2026 01:30 happens in EDT and again in EST
    ny = ZoneInfo("America/New_York")
    first = _at("America/New_York", 2026, 10, 31, 1, minute=30)
    series = Series.of(EventTime(first, ny), EventTime(first + 1800, ny), "FREQ=DAILY;COUNT=3")
    # WHEN expanded THEN the changeover day's occurrence is the EDT one, and each lasts 30 minutes
    got = [(o.start.rfc3339(), o.end.epoch - o.start.epoch) for o in series.occurrences(first, first + 5 * DAY)]
    assert got == [
        ("2026-10-31T01:30:00-04:00", 1800),
        ("2026-11-01T01:30:00-04:00", 1800),
        ("2026-11-02T01:30:00-05:00", 1800),
    ]


def test_a_series_keeps_its_wall_time_across_dst_and_its_length_in_seconds() -> None:
    # GIVEN a weekly Monday 10:00–11:00 meeting in London across the March change
    london = ZoneInfo("Europe/London")
    first = _at("Europe/London", 2026, 3, 23, 10)
    series = Series.of(EventTime(first, london), EventTime(first + 3600, london), "RRULE:FREQ=WEEKLY;BYDAY=MO")
    got = [(o.start.rfc3339(), o.end.rfc3339()) for o in series.occurrences(first, first + 8 * DAY)]
    # THEN it is at 10:00 GMT and then 10:00 BST
    assert got == [
        ("2026-03-23T10:00:00+00:00", "2026-03-23T11:00:00+00:00"),
        ("2026-03-30T10:00:00+01:00", "2026-03-30T11:00:00+01:00"),
    ]


# ------------------------------------------------------------------------------ shapes
def test_an_event_crossing_midnight_is_in_both_days_windows() -> None:
    # GIVEN a daily 23:00–01:00 event in Shanghai
    sh = ZoneInfo("Asia/Shanghai")
    first = _at("Asia/Shanghai", 2026, 5, 1, 23)
    series = Series.of(EventTime(first, sh), EventTime(first + 7200, sh), "FREQ=DAILY")
    # WHEN the window is 3 May 00:00–00:30 local THEN the occurrence that began on 2 May is in it
    window_from = _at("Asia/Shanghai", 2026, 5, 3, 0)
    got = [o.start.rfc3339() for o in series.occurrences(window_from, window_from + 1800)]
    assert got == ["2026-05-02T23:00:00+08:00"]


def test_count_and_until_end_a_series_and_a_date_until_includes_its_day() -> None:
    sh = ZoneInfo("Asia/Shanghai")
    first = _at("Asia/Shanghai", 2026, 1, 5, 9)
    start, end = EventTime(first, sh), EventTime(first + 3600, sh)
    counted = Series.of(start, end, "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=3").occurrences(0, FOREVER - 10 * DAY)
    assert [o.start.rfc3339()[:10] for o in counted] == ["2026-01-05", "2026-01-07", "2026-01-12"]
    until = Series.of(start, end, "FREQ=DAILY;UNTIL=20260107").occurrences(0, FOREVER - 10 * DAY)
    assert [o.start.rfc3339()[:10] for o in until] == ["2026-01-05", "2026-01-06", "2026-01-07"]
    # a UTC UNTIL one second before an occurrence's instant ends the series before it
    cut = Series.of(start, end, "FREQ=DAILY;UNTIL=20260107T005959Z").occurrences(0, FOREVER - 10 * DAY)
    assert [o.start.rfc3339()[:10] for o in cut] == ["2026-01-05", "2026-01-06"]
    assert Series.of(start, end, "FREQ=DAILY;COUNT=2").last_end() == first + DAY + 3600


def test_all_day_series_cover_whole_dates_with_an_exclusive_end_date() -> None:
    tz = ZoneInfo("America/New_York")
    start = parse_event_time({"date": "2026-03-07", "timezone": "America/New_York"})
    end = parse_event_time({"date": "2026-03-09", "timezone": "America/New_York"})
    series = Series.of(start, end, "FREQ=WEEKLY;COUNT=2")
    got = series.occurrences(0, FOREVER - 10 * DAY)
    assert [(o.start.rfc3339(), o.end.rfc3339()) for o in got] == [
        ("2026-03-07", "2026-03-09"),
        ("2026-03-14", "2026-03-16"),
    ]
    # the two dates around the spring change are 47 hours long, and the window sees them so
    assert got[0].end.epoch - got[0].start.epoch == 47 * 3600
    assert got[0].start.epoch == int(datetime(2026, 3, 7, tzinfo=tz).timestamp())


def test_the_events_own_start_is_always_an_occurrence() -> None:
    # GIVEN a Wednesday event whose rule says Mondays (RFC 5545 leaves this undefined)
    sh = ZoneInfo("Asia/Shanghai")
    first = _at("Asia/Shanghai", 2026, 1, 7, 9)
    series = Series.of(EventTime(first, sh), EventTime(first + 3600, sh), "FREQ=WEEKLY;BYDAY=MO;COUNT=2")
    # THEN the Wednesday itself is shown, then the two Mondays the rule produces
    got = [o.start.rfc3339()[:10] for o in series.occurrences(0, FOREVER - 10 * DAY)]
    assert got == ["2026-01-07", "2026-01-12", "2026-01-19"]


def test_a_series_that_began_years_ago_is_expanded_from_near_the_window() -> None:
    sh = ZoneInfo("Asia/Shanghai")
    first = _at("Asia/Shanghai", 2001, 1, 31, 9)
    series = Series.of(EventTime(first, sh), EventTime(first + 3600, sh), "FREQ=MONTHLY;INTERVAL=5")
    window_from = _at("Asia/Shanghai", 2026, 1, 1, 0)
    got = [o.start.rfc3339()[:10] for o in series.occurrences(window_from, window_from + 366 * DAY)]
    # months 5n after January 2001 that have a 31st: Aug 2026 is 25 years + 7 months → (300+7)... by count
    expected = []
    month = 0
    while True:
        year, mon = 2001 + month // 12, month % 12 + 1
        if (year, mon) >= (2027, 1):
            break
        if year == 2026 and mon in (1, 3, 5, 7, 8, 10, 12):
            expected.append(f"{year}-{mon:02d}-31")
        month += 5
    assert got == expected


# ------------------------------------------------------------------------------ refused
@pytest.mark.parametrize(
    "text",
    [
        "",
        "FREQ=SOMETIMES",
        "FREQ=MINUTELY",
        "FREQ=DAILY;INTERVAL=0",
        "FREQ=DAILY;COUNT=-1",
        "FREQ=DAILY;UNTIL=tomorrow",
        "FREQ=DAILY;UNTIL=20260231",
        "FREQ=WEEKLY;BYDAY=XX",
        "FREQ=MONTHLY;BYMONTHDAY=32",
        "FREQ=DAILY;FREQ=WEEKLY",
        "FREQ=DAILY;X-NAME=1",
        "FREQ=HOURLY;BYMONTHDAY=1",
        "EXDATE:20260101",
        "RRULE:FREQ=DAILY\nEXDATE:20260101",
        "FREQ=DAILY;" + "BYHOUR=1;" * 300,
    ],
)
def test_garbage_rules_are_refused_cleanly(text: str) -> None:
    with pytest.raises(InvalidRecurrence):
        parse_rule(text)


@pytest.mark.parametrize(
    "text", ["FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "FREQ=MONTHLY;BYDAY=6MO", "FREQ=DAILY;BYMONTH=4;BYMONTHDAY=31"]
)
def test_rules_that_never_occur_are_refused_quickly(text: str) -> None:
    sh = ZoneInfo("Asia/Shanghai")
    with pytest.raises(InvalidRecurrence):
        Series.of(EventTime(1767225600, sh), EventTime(1767229200, sh), text)


def test_lenient_spellings_are_read() -> None:
    assert parse_rule(" rrule:freq=weekly;interval=2;byday=mo,fr; ").interval == 2
    leap = parse_rule("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29")
    assert leap.count is None


def test_an_hourly_series_over_a_long_window_is_refused_not_listed_forever() -> None:
    utc = ZoneInfo("UTC")
    series = Series.of(EventTime(0, utc), EventTime(60, utc), "FREQ=HOURLY")
    with pytest.raises(TooManyOccurrences):
        series.occurrences(0, 366 * DAY * 2)


@pytest.mark.parametrize(
    "raw",
    [None, {}, {"timestamp": "soon"}, {"timestamp": "-5"}, {"date": "2026-02-30"}, {"date": "20260101"}, "x"],
)
def test_unreadable_times_raise_invalid_event_time(raw: object) -> None:
    with pytest.raises(InvalidEventTime):
        parse_event_time(raw)


def test_times_are_read_leniently_and_unknown_zones_fall_back_to_utc() -> None:
    assert parse_event_time({"timestamp": 1767225600}).epoch == 1767225600
    odd = parse_event_time({"timestamp": "1767225600", "timezone": "Mars/Olympus_Mons"})
    assert odd.tz.key == "UTC"
    assert parse_event_time({"timestamp": "1767225600", "timezone": "../../etc/passwd"}).tz.key == "UTC"
    day = parse_event_time({"date": "2026-03-09", "timezone": "Asia/Shanghai"})
    assert (day.all_day, day.rfc3339()) == (True, "2026-03-09")
