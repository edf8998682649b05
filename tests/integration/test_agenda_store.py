"""The read side on DynamoDB Local: events written by the real sync (and the mirror's own write path)
are found through the agenda index, only the user's relevant items are read, and every DynamoDB call
the reader makes is one the template grants the agenda function."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from feishu_mirror.agenda import AgendaService, NotSyncedYet, UserNotFound, Window
from feishu_mirror.agenda_http import agenda_json
from feishu_mirror.dynamodb.agenda_reader import AgendaReader
from feishu_mirror.models import CollectionId, Event, Fence
from local.feishu_sim import FeishuSimulator
from tests.integration.grants import dynamodb_calls, function_grants
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration
SH = ZoneInfo("Asia/Shanghai")
DAY = 86400


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=SH).timestamp())


def times(start: int, end: int) -> dict[str, Any]:
    return {
        "start_time": {"timestamp": str(start), "timezone": "Asia/Shanghai"},
        "end_time": {"timestamp": str(end), "timezone": "Asia/Shanghai"},
    }


def reader(harness: Harness) -> AgendaReader:
    return harness.services_for().agenda_reader  # a fresh one: its read units count from zero


WEEK = Window(at(2026, 3, 9), at(2026, 3, 16))  # Monday 9 March 2026, Shanghai


def test_events_synced_from_feishu_are_found_and_follow_changes(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN a user whose calendars hold a weekly standup (begun a year earlier), a meeting this week,
    # one next month, an all-day event, and an event on a calendar they only see free/busy of
    open_id = harness.onboard("ou_agenda_sync")
    own = sim.primary_calendar_id(open_id)
    team = sim.create_calendar(open_id, summary="Team", role="reader")
    boss = sim.create_calendar(open_id, summary="Boss", role="free_busy_reader")
    sim.create_event(
        open_id,
        team,
        summary="Standup",
        recurrence="FREQ=WEEKLY;BYDAY=MO,WE",
        **times(at(2025, 3, 3, 9, 30), at(2025, 3, 3, 9, 45)),
    )
    review = sim.create_event(
        open_id, own, summary="Review", location={"name": "3F"}, **times(at(2026, 3, 10, 14), at(2026, 3, 10, 15))
    )
    sim.create_event(open_id, own, summary="Later", **times(at(2026, 4, 10, 14), at(2026, 4, 10, 15)))
    sim.create_event(
        open_id,
        own,
        summary="Offsite",
        start_time={"date": "2026-03-12", "timezone": "Asia/Shanghai"},
        end_time={"date": "2026-03-14", "timezone": "Asia/Shanghai"},
    )
    sim.create_event(open_id, boss, summary="Hidden", **times(at(2026, 3, 11, 9), at(2026, 3, 11, 10)))
    assert harness.sync(open_id).outcome == "synced"
    service = AgendaService(reader(harness))
    # WHEN the week is asked for
    found = [(e["summary"], e["start"], e["end"]) for e in agenda_json(service.agenda(open_id, WEEK))["occurrences"]]
    # THEN the series is expanded in the week, the other events are there, sorted, and nothing else
    assert found == [
        ("Standup", "2026-03-09T09:30:00+08:00", "2026-03-09T09:45:00+08:00"),
        ("Review", "2026-03-10T14:00:00+08:00", "2026-03-10T15:00:00+08:00"),
        ("Standup", "2026-03-11T09:30:00+08:00", "2026-03-11T09:45:00+08:00"),
        ("Offsite", "2026-03-12", "2026-03-14"),
    ]
    # AND after Feishu moves the review and deletes the series, the next sync's mirror answers that
    sim.update_event(open_id, own, review, **times(at(2026, 3, 13, 16), at(2026, 3, 13, 17)))
    standup = next(e["event_id"] for e in sim.events(open_id, team))
    sim.delete_event(open_id, team, standup)
    harness.schedule.mark_dirty(open_id, int(time.time()), frozenset({own, team}))  # as the pushes would
    result = harness.sync(open_id)
    assert (result.outcome, result.events_upserted, result.events_deleted) == ("synced", 1, 1)
    after = [(e["summary"], e["start"]) for e in agenda_json(service.agenda(open_id, WEEK))["occurrences"]]
    assert after == [("Offsite", "2026-03-12"), ("Review", "2026-03-13T16:00:00+08:00")]


def _write(harness: Harness, open_id: str, calendar_id: str, *events: Event) -> None:
    """Events through the mirror's own fenced write path (``EventStore.apply`` under the user's lease)."""
    owner = str(uuid.uuid4())
    now = int(time.time())
    assert harness.schedule.acquire_lease(open_id, owner, now, now + 60) is not None
    harness.events.apply(Fence(open_id, owner), now, CollectionId(open_id, calendar_id), upserts=events)
    harness.schedule.release_after_failure(Fence(open_id, owner), code=None, message="", due_at=now, failed=False)


def test_exceptions_written_by_the_mirror_replace_and_cancel_occurrences(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a synced user, a daily 10:00 series, its Tuesday occurrence moved to the next Monday, its
    # Thursday occurrence cancelled, and the next week's Monday occurrence moved into this week
    open_id = harness.onboard("ou_agenda_exceptions")
    harness.sync(open_id)
    own = sim.primary_calendar_id(open_id)
    tue, thu, next_mon = at(2026, 3, 10, 10), at(2026, 3, 12, 10), at(2026, 3, 16, 10)
    master = Event(
        "daily_0",
        {
            "summary": "Daily",
            "recurrence": "FREQ=DAILY",
            "status": "confirmed",
            **times(at(2026, 1, 1, 10), at(2026, 1, 1, 11)),
        },
    )

    def exception(original: int, start: int, **fields: Any) -> Event:
        return Event(
            f"daily_{original}",
            {
                "summary": "Daily",
                "status": "confirmed",
                "is_exception": True,
                "recurring_event_id": "daily_0",
                **times(start, start + 3600),
                **fields,
            },
        )

    _write(
        harness,
        open_id,
        own,
        master,
        exception(tue, at(2026, 3, 16, 15)),
        exception(thu, thu, status="cancelled"),
        exception(next_mon, at(2026, 3, 14, 8)),
    )
    # WHEN the week is read through the index
    entries = agenda_json(AgendaService(reader(harness)).agenda(open_id, WEEK))["occurrences"]
    # THEN Tuesday's and Thursday's occurrences are gone, and next Monday's is on Saturday
    assert [(e["start"][:16], e["event_id"], e["original_start"][:16]) for e in entries] == [
        ("2026-03-09T10:00", f"daily_{at(2026, 3, 9, 10)}", "2026-03-09T10:00"),
        ("2026-03-11T10:00", f"daily_{at(2026, 3, 11, 10)}", "2026-03-11T10:00"),
        ("2026-03-13T10:00", f"daily_{at(2026, 3, 13, 10)}", "2026-03-13T10:00"),
        ("2026-03-14T08:00", f"daily_{next_mon}", "2026-03-16T10:00"),
        ("2026-03-14T10:00", f"daily_{at(2026, 3, 14, 10)}", "2026-03-14T10:00"),
        ("2026-03-15T10:00", f"daily_{at(2026, 3, 15, 10)}", "2026-03-15T10:00"),
    ]
    # AND free/busy of the same week merges nothing away and skips the cancelled Thursday
    busy = AgendaService(reader(harness)).freebusy([open_id], WEEK)[0].busy
    assert len(busy) == 6
    assert (thu, thu + 3600) not in busy


def test_a_weeks_agenda_reads_only_that_weeks_items_of_that_user(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN a user with two years of hourly meetings (one a day) and another user with events this week
    open_id = harness.onboard("ou_agenda_cost")
    other = harness.onboard("ou_agenda_other")
    harness.sync(open_id)
    harness.sync(other)
    base = at(2025, 3, 1, 9)
    _write(
        harness,
        open_id,
        sim.primary_calendar_id(open_id),
        *(Event(f"e{n}_0", {"summary": f"E{n}", **times(base + n * DAY, base + n * DAY + 3600)}) for n in range(730)),
    )
    _write(
        harness,
        other,
        sim.primary_calendar_id(other),
        *(
            Event(f"o{n}_0", {"summary": "O", **times(at(2026, 3, 9, 9) + n * 600, at(2026, 3, 9, 9) + n * 600 + 300)})
            for n in range(50)
        ),
    )
    source = reader(harness)
    # WHEN one week is asked for
    entries = AgendaService(source).agenda(open_id, WEEK).entries
    # THEN 7 meetings come back, and the queries examined only the user's calendar and the week's
    # meetings with the three days before it (the short partition's lookback: two days of span, one
    # of the longest usual occurrence)
    assert len(entries) == 7
    assert source.items_read <= 1 + 7 + 3
    assert source.consumed < 5


def test_unknown_and_unsynced_users(harness: Harness) -> None:
    service = AgendaService(reader(harness))
    with pytest.raises(UserNotFound):
        service.calendars("ou_agenda_nobody")
    pending = harness.onboard("ou_agenda_pending")
    with pytest.raises(NotSyncedYet):
        service.agenda(pending, WEEK)
    harness.sync(pending)
    assert service.calendars(pending).calendars[0][1] is True  # the primary calendar: its events are mirrored


def test_everything_the_reader_calls_is_granted_to_the_agenda_function_and_no_more(harness: Harness) -> None:
    open_id = harness.onboard("ou_agenda_grants")
    harness.sync(open_id)
    service = AgendaService(reader(harness))
    with dynamodb_calls(harness.client) as calls:
        service.calendars(open_id)
        service.agenda(open_id, WEEK)
        service.freebusy([open_id, "ou_agenda_nobody"], WEEK)
    settings = harness.settings
    tables = {
        "UsersTable": settings.users_table,
        "CalendarsTable": settings.calendars_table,
        "EventsTable": settings.events_table,
    }
    assert calls == function_grants("AgendaFunction", tables)


def test_the_reader_never_reads_a_token(harness: Harness) -> None:
    open_id = harness.onboard("ou_agenda_secrets")
    harness.sync(open_id)
    state = reader(harness).sync_state(open_id)
    assert state is not None
    assert set(state) <= {"open_id", "status", "last_success_at"}
    assert datetime.fromtimestamp(state["last_success_at"], UTC).year >= 2026
