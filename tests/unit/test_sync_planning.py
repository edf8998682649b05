"""Pure sync planning: what a page writes, when a sweep is suspicious, how failures back off."""

from __future__ import annotations

import pytest

from feishu_mirror.models import Calendar, StoredCalendar
from feishu_mirror.sync import failure_backoff, is_mass_deletion, plan_page


def cal(cid: str, summary: str = "s", **fields: str | int | bool) -> Calendar:
    return Calendar(cid, {"summary": summary, **fields})


def test_new_and_changed_calendars_are_upserted_and_unchanged_ones_are_not() -> None:
    current = {"a": StoredCalendar(cal("a")), "b": StoredCalendar(cal("b"))}
    plan = plan_page([(cal("a"), False), (cal("b", "renamed"), False), (cal("c"), False)], current)
    assert [c.calendar_id for c in plan.upserts] == ["b", "c"]
    assert plan.deletions == ()
    assert plan.live_delta == 1
    assert plan.listed_ids == {"a", "b", "c"}


def test_a_field_that_disappears_is_a_change() -> None:
    current = {"a": StoredCalendar(cal("a", color=5))}
    assert [c.calendar_id for c in plan_page([(cal("a"), False)], current).upserts] == ["a"]


def test_is_deleted_tombstones_live_calendars_only() -> None:
    current = {"live": StoredCalendar(cal("live")), "gone": StoredCalendar(cal("gone"), deleted_at=1)}
    plan = plan_page([(cal("live"), True), (cal("gone"), True), (cal("never"), True)], current)
    assert [c.calendar_id for c in plan.deletions] == ["live"]
    assert plan.upserts == ()
    assert plan.live_delta == -1
    assert plan.listed_ids == frozenset()


def test_a_deleted_entry_without_fields_keeps_the_stored_fields_on_the_tombstone() -> None:
    current = {"a": StoredCalendar(cal("a", "kept"))}
    plan = plan_page([(Calendar("a", {}), True)], current)
    assert plan.deletions[0].fields == {"summary": "kept"}


def test_a_tombstoned_calendar_that_comes_back_is_resurrected() -> None:
    current = {"a": StoredCalendar(cal("a"), deleted_at=1)}
    plan = plan_page([(cal("a"), False)], current)
    assert [c.calendar_id for c in plan.upserts] == ["a"]
    assert plan.live_delta == 1


def test_the_last_entry_for_a_calendar_within_a_page_wins() -> None:
    plan = plan_page([(cal("a", "v1"), False), (cal("a", "v2"), False), (cal("b"), False), (cal("b"), True)], {})
    assert [(c.calendar_id, c.fields["summary"]) for c in plan.upserts] == [("a", "v2")]
    assert plan.deletions[0].calendar_id == "b"
    assert plan.live_delta == 1
    assert plan.listed_ids == {"a"}


@pytest.mark.parametrize(
    ("live_before", "missing", "listed", "suspicious"),
    [
        (0, 0, 0, False),  # nothing to lose
        (3, 0, 3, False),  # nothing missing
        (3, 3, 0, True),  # an empty listing for a user who had calendars
        (1, 1, 0, True),
        (3, 2, 1, False),  # small lists may shrink a lot
        (10, 5, 5, False),  # exactly half is not "drastic"
        (10, 6, 4, True),
        (100, 4, 96, False),
        (100, 51, 49, True),
    ],
)
def test_mass_deletion_guard(live_before: int, missing: int, listed: int, suspicious: bool) -> None:
    assert is_mass_deletion(live_before=live_before, missing=missing, listed=listed) is suspicious


def test_failure_backoff_doubles_from_a_minute_and_caps_at_six_hours() -> None:
    assert [failure_backoff(n) for n in range(4)] == [60, 120, 240, 480]
    assert failure_backoff(50) == 6 * 3600
