"""Pure sync planning: what a page writes, when a sweep is suspicious, how failures back off."""

from __future__ import annotations

import uuid
from typing import Any, cast

import pytest

from feishu_mirror.dynamodb.fencing import FencedWrites
from feishu_mirror.dynamodb.listings import MAX_CHECKPOINT_BYTES, ListingStates, decode_ids, encode_ids
from feishu_mirror.models import Calendar, Checkpoint, CollectionId, Event, Fence, Stored, has_readable_events
from feishu_mirror.sync import failure_backoff, is_mass_deletion, plan_page


def cal(cid: str, summary: str = "s", **fields: str | int | bool) -> Calendar:
    return Calendar(cid, {"summary": summary, **fields})


def test_new_and_changed_calendars_are_upserted_and_unchanged_ones_are_not() -> None:
    current = {"a": Stored(cal("a")), "b": Stored(cal("b"))}
    plan = plan_page([(cal("a"), False), (cal("b", "renamed"), False), (cal("c"), False)], current)
    assert [c.calendar_id for c in plan.upserts] == ["b", "c"]
    assert plan.deletions == ()
    assert plan.live_delta == 1
    assert plan.listed_ids == {"a", "b", "c"}


def test_a_field_that_disappears_is_a_change() -> None:
    current = {"a": Stored(cal("a", color=5))}
    assert [c.calendar_id for c in plan_page([(cal("a"), False)], current).upserts] == ["a"]


def test_is_deleted_tombstones_live_calendars_only() -> None:
    current = {"live": Stored(cal("live")), "gone": Stored(cal("gone"), deleted_at=1)}
    plan = plan_page([(cal("live"), True), (cal("gone"), True), (cal("never"), True)], current)
    assert [c.calendar_id for c in plan.deletions] == ["live"]
    assert plan.upserts == ()
    assert plan.live_delta == -1
    assert plan.listed_ids == frozenset()


def test_a_deleted_entry_without_fields_keeps_the_stored_fields_on_the_tombstone() -> None:
    current = {"a": Stored(cal("a", "kept"))}
    plan = plan_page([(Calendar("a", {}), True)], current)
    assert plan.deletions[0].fields == {"summary": "kept"}


def test_a_tombstoned_calendar_that_comes_back_is_resurrected() -> None:
    current = {"a": Stored(cal("a"), deleted_at=1)}
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


# ------------------------------------------------------------------------------ events


def test_an_event_entry_keeps_its_nested_fields_and_a_cancelled_one_is_a_deletion() -> None:
    raw = {
        "event_id": "e1_0",
        "summary": "Review",
        "start_time": {"timestamp": "1767225600", "timezone": "Asia/Shanghai"},
        "reminders": [{"minutes": 5}],
        "status": "confirmed",
        "color": True,  # wrong type: dropped
        "unknown": "ignored",
    }
    event, gone = Event.from_feishu(raw)
    assert (event.key, gone) == ("e1_0", False)
    assert dict(event.fields) == {
        "summary": "Review",
        "start_time": {"timestamp": "1767225600", "timezone": "Asia/Shanghai"},
        "reminders": [{"minutes": 5}],
        "status": "confirmed",
    }
    assert Event.from_feishu({**raw, "status": "cancelled"})[1] is True
    with pytest.raises(ValueError, match="event_id"):
        Event.from_feishu({"summary": "no id"})


def test_events_plan_like_calendars_an_unchanged_nested_event_writes_nothing() -> None:
    start = {"timestamp": "1", "timezone": "UTC"}
    current = {"e": Stored(Event("e", {"start_time": start, "summary": "x"}))}
    same = Event("e", {"start_time": dict(start), "summary": "x"})
    moved = Event("e", {"start_time": {"timestamp": "2", "timezone": "UTC"}, "summary": "x"})
    assert plan_page([(same, False)], current).upserts == ()
    assert plan_page([(moved, False)], current).upserts == (moved,)
    assert plan_page([(Event("e", {}), True)], current).deletions == (current["e"].item,)


@pytest.mark.parametrize(
    ("kind", "role", "readable"),
    [
        ("primary", "owner", True),
        ("shared", "reader", True),
        ("resource", "writer", True),
        ("shared", "free_busy_reader", False),
        ("google", "owner", False),
        ("exchange", "reader", False),
    ],
)
def test_only_primary_shared_and_resource_calendars_read_by_the_user_have_their_events_mirrored(
    kind: str, role: str, readable: bool
) -> None:
    assert has_readable_events(Calendar("c", {"type": kind, "role": role})) is readable


def test_checkpointed_ids_survive_compression_and_5000_fit_in_an_item() -> None:
    ids = {f"{uuid.uuid4()}_0" for _ in range(5000)}
    blob = encode_ids(ids)
    assert decode_ids(blob) == ids
    assert len(blob) < MAX_CHECKPOINT_BYTES
    assert decode_ids(encode_ids(())) == frozenset()


class _NoWrites:
    def transact_write_items(self, **_: object) -> None:
        raise AssertionError("nothing may be written")


def test_a_checkpoint_too_big_for_an_item_is_skipped_not_written() -> None:
    client = cast("Any", _NoWrites())
    store = ListingStates(client, FencedWrites(client, "users"), "listings")
    huge = Checkpoint("full", "page-token", frozenset(f"{uuid.uuid4()}_0" for _ in range(12_000)), 1)
    assert store.save_checkpoint(Fence("ou_1", "owner"), 1, CollectionId("ou_1", "cal"), huge) is False
