"""The agenda: exceptions over series, free/busy, request checks and the routes' JSON (``agenda_http``),
and that the index's queries find every item that matters (the service over an in-memory index against
expanding every item)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feishu_mirror.agenda import (
    SHORT_SPAN,
    AgendaRequestInvalid,
    AgendaService,
    EventItem,
    NotSyncedYet,
    UserNotFound,
    Window,
    WindowTooBusy,
    agenda_index_attributes,
    busy_intervals,
    expand,
)
from feishu_mirror.agenda_http import calendars_json, entry_json, freebusy_json, open_id_list, parse_window, time_zone
from feishu_mirror.recurrence import FOREVER
from tests.agenda_index import FEB_2, OPEN_ID, SH, WEEK, WEEKLY, IndexedSource, at, event, exception_of

DAY = 86400


def agenda(items: list[dict[str, Any]], window: Window) -> list[tuple[str, str, str | None]]:
    return [(e.event_id, e.start.rfc3339(), e.recurring_event_id) for e in expand(map(EventItem.parse, items), window)]


def test_a_series_gives_one_occurrence_per_week_with_the_instance_id_feishu_uses() -> None:
    assert agenda([WEEKLY], WEEK) == [(f"mtg_{FEB_2}", "2026-02-02T10:00:00+08:00", "mtg_0")]


def test_a_modified_occurrence_replaces_the_generated_one() -> None:
    moved = exception_of(WEEKLY, FEB_2, FEB_2 + 3600, FEB_2 + 7200, summary="Weekly (later)")
    entries = expand(map(EventItem.parse, [WEEKLY, moved]), WEEK)
    assert [(e.event_id, e.start.rfc3339(), e.fields["summary"]) for e in entries] == [
        (f"mtg_{FEB_2}", "2026-02-02T11:00:00+08:00", "Weekly (later)")
    ]
    assert entry_json(entries[0])["original_start"] == "2026-02-02T10:00:00+08:00"


def test_an_occurrence_moved_out_of_the_window_leaves_it_and_one_moved_in_joins_it() -> None:
    # GIVEN the 2 Feb occurrence moved to 10 Feb, and the 16 Feb one moved to 4 Feb
    out = exception_of(WEEKLY, FEB_2, at(2026, 2, 10, 10), at(2026, 2, 10, 11))
    feb_16 = at(2026, 2, 16, 10)
    into = exception_of(WEEKLY, feb_16, at(2026, 2, 4, 15), at(2026, 2, 4, 16))
    # THEN the week shows only the one moved in, and the next week both the moved-out one and the 9 Feb one
    assert agenda([WEEKLY, out, into], WEEK) == [(f"mtg_{feb_16}", "2026-02-04T15:00:00+08:00", "mtg_0")]
    next_week = Window(at(2026, 2, 9), at(2026, 2, 16))
    assert [e[1] for e in agenda([WEEKLY, out, into], next_week)] == [
        "2026-02-09T10:00:00+08:00",
        "2026-02-10T10:00:00+08:00",
    ]


def test_a_cancelled_occurrence_removes_it_and_cancelled_events_are_absent() -> None:
    cancelled = exception_of(WEEKLY, FEB_2, FEB_2, FEB_2 + 3600, status="cancelled")
    gone = event("gone_0", at(2026, 2, 3, 9), at(2026, 2, 3, 10), status="cancelled")
    gone_series = {**WEEKLY, "event_id": "other_0", "status": "cancelled"}
    assert agenda([WEEKLY, cancelled, gone, gone_series], WEEK) == []


def test_an_exception_whose_series_is_missing_is_shown_at_its_own_time() -> None:
    orphan = exception_of(WEEKLY, FEB_2, FEB_2, FEB_2 + 3600)
    assert agenda([orphan], WEEK) == [(f"mtg_{FEB_2}", "2026-02-02T10:00:00+08:00", "mtg_0")]


def test_a_garbled_rule_shows_the_event_once_at_its_own_time() -> None:
    broken = {**WEEKLY, "recurrence": "FREQ=NEVERMORE"}
    assert agenda([broken], Window(at(2026, 1, 5), at(2026, 3, 1))) == [("mtg_0", "2026-01-05T10:00:00+08:00", None)]


def test_all_day_events_and_their_exceptions_are_dates() -> None:
    # GIVEN a yearly all-day birthday and its 2027 occurrence moved a day (its id names the UTC midnight)
    birthday: dict[str, Any] = {
        "calendar_id": "cal_a",
        "event_id": "bday_0",
        "summary": "Birthday",
        "start_time": {"date": "2026-02-03", "timezone": SH},
        "end_time": {"date": "2026-02-04", "timezone": SH},
        "recurrence": "FREQ=YEARLY",
        "free_busy_status": "free",
    }
    moved = {
        **birthday,
        "event_id": f"bday_{int(datetime(2027, 2, 3, tzinfo=UTC).timestamp())}",
        "recurrence": "",
        "is_exception": True,
        "recurring_event_id": "bday_0",
        "start_time": {"date": "2027-02-04", "timezone": SH},
        "end_time": {"date": "2027-02-05", "timezone": SH},
    }
    entries = expand(map(EventItem.parse, [birthday, moved]), Window(at(2026, 1, 1), at(2027, 12, 31)))
    assert [(entry_json(e)["start"], entry_json(e)["end"], entry_json(e)["all_day"]) for e in entries] == [
        ("2026-02-03", "2026-02-04", True),
        ("2027-02-04", "2027-02-05", True),
    ]
    assert entry_json(entries[1])["original_start"] == "2027-02-03"
    # AND free all-day events are no busy time
    assert busy_intervals(entries, Window(at(2026, 1, 1), at(2027, 12, 31))) == []


def test_entries_are_sorted_by_start_and_carry_every_field_a_consumer_needs() -> None:
    lunch = event("lunch_0", at(2026, 2, 2, 12), at(2026, 2, 2, 13), "cal_b", location={"name": "Canteen"})
    found = [entry_json(e) for e in expand(map(EventItem.parse, [lunch, WEEKLY]), WEEK)]
    assert [f["event_id"] for f in found] == [f"mtg_{FEB_2}", "lunch_0"]
    assert set(found[1]) >= {
        "calendar_id",
        "event_id",
        "recurring_event_id",
        "start",
        "end",
        "all_day",
        "summary",
        "status",
        "free_busy_status",
        "location",
        "original_start",
    }
    assert found[1]["location"] == {"name": "Canteen"}
    assert found[1]["recurring_event_id"] is None
    # shown in another zone on request
    assert (
        entry_json(expand([EventItem.parse(lunch)], WEEK)[0], ZoneInfo("UTC"))["start"] == "2026-02-02T04:00:00+00:00"
    )


def test_busy_time_merges_overlaps_skips_free_and_cancelled_and_is_clipped_to_the_window() -> None:
    items = [
        event("a_0", at(2026, 2, 1, 23), at(2026, 2, 2, 9)),  # starts before the window
        event("b_0", at(2026, 2, 2, 8, 30), at(2026, 2, 2, 10)),  # overlaps a
        event("c_0", at(2026, 2, 2, 10), at(2026, 2, 2, 10, 30)),  # touches b
        event("d_0", at(2026, 2, 2, 12), at(2026, 2, 2, 13), free_busy_status="free"),
        event("e_0", at(2026, 2, 2, 14), at(2026, 2, 2, 15), status="tentative"),
        event("f_0", at(2026, 2, 2, 16), at(2026, 2, 2, 16)),  # zero length
    ]
    window = Window(at(2026, 2, 2), at(2026, 2, 3))
    assert busy_intervals(expand(map(EventItem.parse, items), window), window) == [
        (at(2026, 2, 2), at(2026, 2, 2, 10, 30)),
        (at(2026, 2, 2, 14), at(2026, 2, 2, 15)),
    ]


def test_a_window_with_too_many_occurrences_is_refused() -> None:
    hourly = [event(f"h{n}_0", at(2026, 1, 1), at(2026, 1, 1, 0, 30), recurrence="FREQ=HOURLY") for n in range(2)]
    many = [event(f"x{n}_0", at(2026, 1, 1) + n * 60, at(2026, 1, 1) + n * 60 + 30) for n in range(10_001)]
    with pytest.raises(WindowTooBusy):
        expand(map(EventItem.parse, hourly), Window(at(2026, 1, 1), at(2027, 1, 2)))
    with pytest.raises(WindowTooBusy):
        expand(map(EventItem.parse, many), Window(at(2026, 1, 1), at(2026, 1, 31)))


# ------------------------------------------------------------------------------ index attributes
def test_index_attributes_place_short_items_by_start_and_series_and_long_items_by_end() -> None:
    single = agenda_index_attributes(OPEN_ID, "s_0", event("s_0", 100, 3700, location={"name": "3F"}))
    assert single.pop("agenda_entry") == (
        '{"summary":"s_0","start_time":{"timestamp":"100","timezone":"Asia/Shanghai"},'
        '"end_time":{"timestamp":"3700","timezone":"Asia/Shanghai"},"status":"confirmed","location":{"name":"3F"}}'
    )
    assert single == {"agenda_key": f"{OPEN_ID}#short", "agenda_at": 100, "agenda_start": 100, "agenda_end": 3700}
    series = agenda_index_attributes(OPEN_ID, "mtg_0", WEEKLY)
    assert (series["agenda_key"], series["agenda_at"]) == (f"{OPEN_ID}#long", FOREVER)
    counted = agenda_index_attributes(OPEN_ID, "mtg_0", {**WEEKLY, "recurrence": "FREQ=WEEKLY;COUNT=2"})
    assert counted["agenda_end"] == at(2026, 1, 12, 11)
    trip = agenda_index_attributes(OPEN_ID, "t_0", event("t_0", 0, SHORT_SPAN + 1))
    assert (trip["agenda_key"], trip["agenda_at"]) == (f"{OPEN_ID}#long", SHORT_SPAN + 1)
    # an exception spans both where it is and where it was
    moved = exception_of(WEEKLY, FEB_2, FEB_2 + DAY, FEB_2 + DAY + 3600)
    attrs = agenda_index_attributes(OPEN_ID, str(moved["event_id"]), moved)
    assert (attrs["agenda_start"], attrs["agenda_end"], attrs["agenda_key"]) == (
        FEB_2,
        FEB_2 + DAY + 3600,
        f"{OPEN_ID}#short",
    )
    # a cancelled occurrence stays in the index (it removes its occurrence); a cancelled event does not
    cancelled = exception_of(WEEKLY, FEB_2, FEB_2, FEB_2 + 3600, status="cancelled")
    assert agenda_index_attributes(OPEN_ID, str(cancelled["event_id"]), cancelled)["agenda_start"] == FEB_2
    assert agenda_index_attributes(OPEN_ID, "s_0", {**event("s_0", 100, 3700), "status": "cancelled"}) == {}
    assert agenda_index_attributes(OPEN_ID, "s_0", {"summary": "no times"}) == {}


RULES = [
    "FREQ=DAILY",
    "FREQ=WEEKLY;BYDAY=MO,TH",
    "FREQ=WEEKLY;INTERVAL=2;COUNT=6",
    "FREQ=MONTHLY",
    "FREQ=DAILY;UNTIL=20260301",
]


@st.composite
def calendars(draw: st.DrawFn) -> list[dict[str, Any]]:
    base = at(2026, 1, 1)
    items: list[dict[str, Any]] = []
    for n in range(draw(st.integers(0, 6))):  # single events, some long, some overnight
        start = base + draw(st.integers(-20, 80)) * 3600 * 6
        items.append(event(f"s{n}_0", start, start + draw(st.sampled_from([0, 1800, 3600, 30 * 3600, 5 * DAY]))))
    for n in range(draw(st.integers(0, 3))):  # series, some with occurrences longer than the short span
        start = base + draw(st.integers(-40, 40)) * 3600 * 6
        length = draw(st.sampled_from([1800, 3600, 3 * DAY]))
        master = event(f"m{n}_0", start, start + length, recurrence=draw(st.sampled_from(RULES)))
        items.append(master)
        series = EventItem.parse(master).series
        assert series is not None
        generated = series.occurrences(base - 60 * DAY, base + 120 * DAY)
        for occurrence in draw(st.lists(st.sampled_from(generated), max_size=3, unique=True)) if generated else []:
            shift = draw(st.integers(-15, 15)) * DAY + draw(st.sampled_from([0, 3600]))
            begin = occurrence.start.epoch + shift
            status = draw(st.sampled_from(["confirmed", "cancelled"]))
            shortened = draw(st.sampled_from([length, 1800]))
            items.append(exception_of(master, occurrence.start.epoch, begin, begin + shortened, status=status))
    return items


@settings(max_examples=150, deadline=None)
@given(calendars(), st.integers(-30, 100), st.integers(1, 20))
def test_the_index_queries_find_everything_that_expanding_every_item_finds(
    items: list[dict[str, Any]], offset_days: int, days: int
) -> None:
    # GIVEN events, series and moved or cancelled occurrences, and a window
    window = Window.days_from(at(2026, 1, 1) + offset_days * DAY, days)
    source = IndexedSource(items)
    # WHEN the service answers from the index, and every item is expanded without it
    got = [entry_json(e) for e in AgendaService(source).agenda(OPEN_ID, window).entries]
    expected = [entry_json(e) for e in expand(map(EventItem.parse, items), window)]
    # THEN the answers are the same
    assert got == expected


def test_the_service_reads_two_index_partitions_for_a_window() -> None:
    source = IndexedSource([WEEKLY])
    AgendaService(source).agenda(OPEN_ID, WEEK)
    assert sorted(q[0] for q in source.queries) == ["long", "short"]
    # a series of multi-day occurrences reaches further back: one more slice of the long partition, and
    # the short partition again from further back
    long_series = event("camp_0", at(2026, 1, 5), at(2026, 1, 8), recurrence="FREQ=WEEKLY")
    source = IndexedSource([long_series])
    AgendaService(source).agenda(OPEN_ID, WEEK)
    assert sorted(q[0] for q in source.queries) == ["long", "long", "short", "short"]
    assert min(q[1] for q in source.queries if q[0] == "short") == WEEK.start - SHORT_SPAN - 3 * DAY


def test_a_shortened_occurrence_of_a_long_series_is_found_however_early_it_began() -> None:
    # GIVEN a weekly three-day camp from Friday 30 January, whose 30 Jan occurrence was cut to 30 minutes
    camp = event("camp_0", at(2026, 1, 30), at(2026, 2, 2), recurrence="FREQ=WEEKLY;COUNT=2")
    cut = exception_of(camp, at(2026, 1, 30), at(2026, 1, 30), at(2026, 1, 30, 0, 30))
    # WHEN the week of 2 February 00:00 (when the uncut occurrence would still run) is asked for
    window = Window(at(2026, 2, 1, 12), at(2026, 2, 5))
    found = AgendaService(IndexedSource([camp, cut])).agenda(OPEN_ID, window)
    # THEN the cut occurrence is found (it starts more than the short span before the window) and hides it
    assert found.entries == ()


# ------------------------------------------------------------------------------ the service
def test_unknown_and_unsynced_users_are_told_apart() -> None:
    with pytest.raises(UserNotFound):
        AgendaService(IndexedSource([])).agenda("ou_nobody", WEEK)
    with pytest.raises(NotSyncedYet, match="first sync has not finished"):
        AgendaService(IndexedSource([], synced=False)).calendars(OPEN_ID)
    with pytest.raises(AgendaRequestInvalid):
        AgendaService(IndexedSource([])).agenda("ou_<script>", WEEK)


def test_only_live_readable_calendars_count() -> None:
    # GIVEN an event on a calendar the user only sees free/busy of, and one on a calendar no longer listed
    hidden = event("h_0", at(2026, 2, 3, 9), at(2026, 2, 3, 10), "cal_fb")
    left = event("l_0", at(2026, 2, 3, 11), at(2026, 2, 3, 12), "cal_gone")
    listed = [
        {"calendar_id": "cal_a", "type": "primary", "role": "owner", "summary": "Mine"},
        {"calendar_id": "cal_fb", "type": "shared", "role": "free_busy_reader", "summary": "Boss"},
    ]
    service = AgendaService(IndexedSource([WEEKLY, hidden, left], calendars=listed))
    found = service.agenda(OPEN_ID, WEEK)
    assert [e.event_id for e in found.entries] == [f"mtg_{FEB_2}"]
    assert found.calendars == ("cal_a",)
    mirrored = {c["calendar_id"]: c["events_mirrored"] for c in calendars_json(service.calendars(OPEN_ID))["calendars"]}
    assert mirrored == {"cal_a": True, "cal_fb": False}


def test_freebusy_answers_each_user_and_names_those_it_cannot() -> None:
    service = AgendaService(IndexedSource([WEEKLY]))
    users = service.freebusy([OPEN_ID, "ou_nobody"], WEEK)
    body = freebusy_json(WEEK, users)
    assert body["users"][0] == {
        "open_id": OPEN_ID,
        "synced_at": "2026-01-01T00:00:00Z",
        "busy": [{"start": "2026-02-02T02:00:00Z", "end": "2026-02-02T03:00:00Z"}],
    }
    assert body["users"][1]["error"] == "unknown_user"
    assert (body["from"], body["to"]) == ("2026-02-01T16:00:00Z", "2026-02-08T16:00:00Z")


# ------------------------------------------------------------------------------ requests
@pytest.mark.parametrize(
    ("start", "end", "code"),
    [
        (None, "2026-02-09T00:00:00+08:00", "invalid_window"),
        ("2026-02-02", "2026-02-09T00:00:00+08:00", "invalid_window"),
        ("2026-02-02T00:00:00", "2026-02-09T00:00:00+08:00", "invalid_window"),
        ("monday", "friday", "invalid_window"),
        ("2026-02-30T00:00:00Z", "2026-03-09T00:00:00Z", "invalid_window"),
        ("2026-02-09T00:00:00Z", "2026-02-02T00:00:00Z", "invalid_window"),
        ("2026-02-02T00:00:00Z", "2026-02-02T00:00:00Z", "invalid_window"),
        ("2026-01-01T00:00:00Z", "2027-01-03T00:00:00Z", "window_too_long"),
        ("1969-12-31T00:00:00Z", "1970-01-02T00:00:00Z", "invalid_window"),
    ],
)
def test_bad_windows_are_refused_with_a_reason(start: str | None, end: str | None, code: str) -> None:
    with pytest.raises(AgendaRequestInvalid) as refused:
        parse_window(start, end)
    assert refused.value.code == code
    assert refused.value.status == 400


def test_windows_accept_offsets_z_fractions_and_a_plus_that_became_a_space() -> None:
    assert parse_window("2026-02-02T00:00:00+08:00", "2026-02-09T00:00:00.5+08:00") == WEEK
    assert parse_window("2026-02-02T00:00:00 08:00", "2026-02-08T16:00:00z") == WEEK
    assert parse_window("2026-01-01T00:00:00Z", "2027-01-02T00:00:00Z").end - at(2026, 1, 1, tz="UTC") == 366 * DAY


def test_user_lists_and_zones_are_checked() -> None:
    assert open_id_list("ou_a, ou_b,ou_a,") == ["ou_a", "ou_b"]
    with pytest.raises(AgendaRequestInvalid) as too_many:
        open_id_list(",".join(f"ou_{n}" for n in range(51)))
    assert too_many.value.code == "too_many_users"
    for bad in ("", None, "ou_a,ou b", "../x"):
        with pytest.raises(AgendaRequestInvalid):
            open_id_list(bad)
    assert time_zone("Europe/London") == ZoneInfo("Europe/London")
    assert time_zone(None) is None
    with pytest.raises(AgendaRequestInvalid) as bad_zone:
        time_zone("Mars/Base")
    assert bad_zone.value.code == "invalid_time_zone"
