"""What Feishu sends in events and calendars reaches DynamoDB Local faithfully: exact numbers, recurring
events with their cancelled occurrences, and items DynamoDB cannot hold as sent (stored reduced, marked)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from feishu_mirror.health import UserHealth
from feishu_mirror.models import EVENT_FIELDS, CollectionId, Fence
from feishu_mirror.observability import metrics
from feishu_mirror.storable import same_value
from local.feishu_sim import FeishuSimulator
from tests.integration.harness import Harness

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning"),
]

WEEKLY = "FREQ=WEEKLY;INTERVAL=1;COUNT=6"
MONDAY_9AM_SHANGHAI = 1_767_575_200  # 2026-01-05 09:00 +08:00


@pytest.fixture(autouse=True)
def fresh_metrics() -> Iterator[None]:
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def mirrored_fields(item: dict[str, Any]) -> dict[str, Any]:
    return {name: item[name] for name in EVENT_FIELDS if name in item}


def assert_events_match(harness: Harness, open_id: str, calendar_id: str) -> None:
    """Live mirror events equal Feishu's live events (cancelled occurrences included), numbers by value."""
    truth = {e["event_id"]: mirrored_fields(e) for e in harness.sim.events(open_id, calendar_id)}
    live = {eid: mirrored_fields(item) for eid, item in harness.live_events(open_id, calendar_id).items()}
    assert same_value(live, truth), f"mirror {live} != Feishu {truth}"


def health(harness: Harness, open_id: str) -> UserHealth:
    item = harness.health.get_health(open_id)
    assert item is not None
    return UserHealth.from_item(item, now=int(time.time()), stale_after_seconds=3600)


# ------------------------------------------------------------------------------ numbers
def test_coordinates_and_other_json_floats_are_mirrored_exactly(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN an event whose location carries latitude/longitude as JSON floats, and numbers beyond a float's
    open_id = harness.onboard("ou_floats")
    own = sim.primary_calendar_id(open_id)
    event_id = sim.create_event(
        open_id,
        own,
        summary="Site visit",
        location={"name": "外滩", "address": "中山东一路", "latitude": 31.2400459, "longitude": 121.4901563},
        schemas=[
            {
                "ui_name": "ForwardIcon",
                "weight": Decimal("0.12345678901234567890123456789"),
                "round": Decimal("-1E+45"),
                "tiny": Decimal("1E-130"),
            }
        ],
        color=-(10**45),  # stored as -1E+45; DynamoDB gives a top-level number back with all 46 digits
        reminders=[{"minutes": 2**62}],
    )
    # WHEN the user syncs
    result = harness.sync(open_id)
    # THEN the sync succeeds and DynamoDB holds every number as Feishu wrote it
    assert (result.outcome, result.events_upserted) == ("synced", 1)
    item = harness.live_events(open_id, own)[event_id]
    assert item["location"]["latitude"] == Decimal("31.2400459")
    assert item["location"]["longitude"] == Decimal("121.4901563")
    assert item["schemas"][0]["weight"] == Decimal("0.12345678901234567890123456789")
    assert type(item["reminders"][0]["minutes"]) is int
    assert item["color"] == -(10**45)
    assert "mirror_reduced" not in item
    assert_events_match(harness, open_id, own)
    # AND a later listing finds nothing changed (Decimals compare with what DynamoDB gives back)
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    assert harness.sync(open_id).events_upserted == 0


# ------------------------------------------------------------------------------ recurring events
@pytest.mark.parametrize("exceptions_first", [False, True], ids=["master-first", "exceptions-first"])
def test_a_cancelled_occurrence_stays_live_and_deleting_the_master_takes_its_exceptions(
    harness: Harness, sim: FeishuSimulator, exceptions_first: bool
) -> None:
    # GIVEN a weekly meeting with one occurrence moved and one cancelled, in Feishu's id shapes
    open_id = harness.onboard(f"ou_recurring_{exceptions_first}")
    own = sim.primary_calendar_id(open_id)
    master = sim.create_event(
        open_id,
        own,
        summary="Weekly sync",
        recurrence=WEEKLY,
        start_time={"timestamp": str(MONDAY_9AM_SHANGHAI), "timezone": "Asia/Shanghai"},
        end_time={"timestamp": str(MONDAY_9AM_SHANGHAI + 1800), "timezone": "Asia/Shanghai"},
    )
    week = 7 * 86400
    moved = sim.create_exception(open_id, own, master, MONDAY_9AM_SHANGHAI + week, summary="Weekly sync (moved)")
    cancelled = sim.create_exception(open_id, own, master, MONDAY_9AM_SHANGHAI + 2 * week, cancelled=True)
    single = sim.create_event(open_id, own, summary="One-off")
    assert moved == f"{master.removesuffix('_0')}_{MONDAY_9AM_SHANGHAI + week}"
    # WHEN the user syncs
    harness.sync(open_id)
    # THEN the cancelled occurrence is a live item with status "cancelled": no deleted_at, no TTL
    items = harness.event_items(open_id, own)
    assert items[cancelled]["status"] == "cancelled"
    assert "deleted_at" not in items[cancelled]
    assert "expires_at" not in items[cancelled]
    assert (items[cancelled]["is_exception"], items[cancelled]["recurring_event_id"]) == (True, master)
    assert_events_match(harness, open_id, own)
    # WHEN another occurrence is cancelled in Feishu and the change is pushed
    sim.delete_event(open_id, own, moved)
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    harness.sync(open_id)
    # THEN it is live and cancelled too
    assert harness.live_events(open_id, own)[moved]["status"] == "cancelled"
    # WHEN the master is deleted (Feishu lists its exceptions' changes after it, or before it)
    sim.delete_event(open_id, own, master, exceptions_first=exceptions_first)
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    result = harness.sync(open_id)
    # THEN the master and every exception are tombstones, and the single event lives on
    assert result.outcome == "synced"
    items = harness.event_items(open_id, own)
    assert {eid for eid, item in items.items() if "deleted_at" not in item} == {single}
    assert all(items[eid]["expires_at"] > time.time() for eid in (master, moved, cancelled))
    assert all(items[eid]["recurring_event_id"] == master for eid in (moved, cancelled))  # tombstones keep fields
    assert_events_match(harness, open_id, own)


def test_a_cancelled_occurrence_of_a_master_already_deleted_is_not_brought_back(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a mirrored recurring event whose master is deleted, then tombstoned by a sync
    open_id = harness.onboard("ou_late_exception")
    own = sim.primary_calendar_id(open_id)
    master = sim.create_event(open_id, own, summary="Daily", recurrence="FREQ=DAILY;COUNT=5")
    exception = sim.create_exception(open_id, own, master)
    harness.sync(open_id)
    harness.events.apply(  # the mirror learnt of the master's deletion first (its exception not yet)
        _fence(harness, open_id),
        int(time.time()),
        CollectionId(open_id, own),
        deletions=[_stored(harness, open_id, own, master)],
    )
    _release(harness, open_id)
    # WHEN Feishu then reports the occurrence cancelled
    sim.update_event(open_id, own, exception, status="cancelled")
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    harness.sync(open_id)
    # THEN it is a tombstone: a cancelled occurrence lives only while its master does
    assert "deleted_at" in harness.event_items(open_id, own)[exception]


@pytest.mark.parametrize("exceptions_first", [False, True], ids=["master-first", "exceptions-first"])
def test_a_series_made_and_deleted_between_two_syncs_leaves_nothing_live(
    harness: Harness, sim: FeishuSimulator, exceptions_first: bool
) -> None:
    # GIVEN a mirrored calendar, then a recurring event with a cancelled and a moved occurrence that is
    # created and deleted again before the next sync (its increment lists them all as cancelled)
    open_id = harness.onboard(f"ou_short_series_{exceptions_first}")
    own = sim.primary_calendar_id(open_id)
    harness.sync(open_id)
    master = sim.create_event(open_id, own, summary="Short-lived", recurrence="FREQ=DAILY;COUNT=3")
    sim.create_exception(open_id, own, master, cancelled=True)
    sim.create_exception(open_id, own, master, summary="moved")
    sim.delete_event(open_id, own, master, exceptions_first=exceptions_first)
    # WHEN the change is pushed and synced
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    assert harness.sync(open_id).outcome == "synced"
    # THEN no occurrence of the series is live
    assert harness.live_events(open_id, own) == {}
    assert_events_match(harness, open_id, own)


def _fence(harness: Harness, open_id: str) -> Fence:
    owner = "test-writer"
    now = int(time.time())
    assert harness.schedule.acquire_lease(open_id, owner, now, now + 60) is not None
    return Fence(open_id, owner)


def _release(harness: Harness, open_id: str) -> None:
    harness.remove_user_attribute(open_id, "lease_owner")
    harness.remove_user_attribute(open_id, "lease_expires_at")


def _stored(harness: Harness, open_id: str, calendar_id: str, event_id: str) -> Any:
    return harness.events.load_some(CollectionId(open_id, calendar_id), [event_id])[event_id].item


# ------------------------------------------------------------------------------ what DynamoDB cannot hold
def test_items_dynamodb_cannot_hold_are_stored_reduced_and_nothing_else_is_held_up(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a user whose primary calendar holds events DynamoDB cannot hold as sent, among normal ones,
    # and a second calendar with events of its own
    open_id = harness.onboard("ou_unholdable")
    own = sim.primary_calendar_id(open_id)
    team = sim.create_calendar(open_id, summary="Team", role="writer")
    deep: Any = "leaf"
    for _ in range(40):
        deep = {"nested": deep}
    odd: dict[str, dict[str, Any]] = {
        "huge": {"summary": "Offsite", "description": "议程 " * 150_000},  # ~900 KB of UTF-8
        "deep": {"summary": "Deep", "location": {"name": "Room", "extra": deep}},
        "digits": {"summary": "Digits", "schemas": [{"ui_name": "x", "checksum": 2**200}]},
        "surrogate": {"summary": "Broken \ud83d text", "description": "fine"},
        "empty_key": {"summary": "Empty key", "vchat": {"": "value"}},
    }
    ids = {name: sim.create_event(open_id, own, **fields) for name, fields in odd.items()}
    normal = sim.create_event(open_id, own, summary="Normal 🙂", description="")
    theirs = [sim.create_event(open_id, team, summary=f"Team {n}") for n in range(3)]
    # WHEN the user syncs
    result = harness.sync(open_id)
    # THEN the sync succeeds, both calendars converge, and each odd item is stored without the offending field
    assert result.outcome == "synced", result
    items = harness.live_events(open_id, own)
    assert set(items) == {*ids.values(), normal}
    reasons = {name: items[eid].get("mirror_reduced") for name, eid in ids.items()}
    assert reasons == {
        "huge": {"description": "too_large"},
        "deep": {"location": "too_deep"},
        "digits": {"schemas": "number_out_of_range"},
        "surrogate": {"summary": "invalid_text"},
        "empty_key": {"vchat": "empty_key"},
    }
    assert "description" not in items[ids["huge"]]
    assert items[ids["huge"]]["summary"] == "Offsite"
    assert items[ids["surrogate"]]["description"] == "fine"
    assert items[normal]["summary"] == "Normal 🙂"
    assert set(harness.live_events(open_id, team)) == set(theirs)
    # AND the event listings committed their sync tokens
    assert all(listing.state.sync_token for listing in harness.listings.event_listings(open_id).values())
    # AND the user's health and the metric count the reduced items
    assert health(harness, open_id).items_reduced == 5
    assert metrics.metric_set["ItemsReduced"]["Value"] == [5]
    # WHEN the calendar is listed again with nothing changed
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    again = harness.sync(open_id)
    # THEN no reduced item is written again
    assert (again.outcome, again.event_listings, again.events_upserted) == ("synced", 1, 0)
    # WHEN one of them is fixed in Feishu
    sim.update_event(open_id, own, ids["deep"], location={"name": "Room"})
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    harness.sync(open_id)
    # THEN it is stored whole and unmarked, and health counts one fewer
    fixed = harness.live_events(open_id, own)[ids["deep"]]
    assert (fixed["location"], "mirror_reduced" in fixed) == ({"name": "Room"}, False)
    assert health(harness, open_id).items_reduced == 4


def test_a_calendar_dynamodb_cannot_hold_as_sent_is_stored_reduced(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_odd_calendar")
    odd = sim.create_calendar(open_id, summary="Team \udc00", description="d" * 450_000, color=2**130)
    result = harness.sync(open_id)
    assert result.outcome == "synced"
    item = harness.live_items(open_id)[odd]
    assert item["mirror_reduced"] == {
        "color": "number_out_of_range",
        "description": "too_large",
        "summary": "invalid_text",
    }
    assert health(harness, open_id).items_reduced == 1
    harness.pings.dispatch([open_id], reason="calendar_changed")
    assert harness.sync(open_id).upserted == 0


def test_a_page_of_large_events_is_written_in_transactions_under_dynamodbs_4_mb(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN fourteen events of about 330 KB each (each fits an item, together more than 4 MB)
    open_id = harness.onboard("ou_large_page")
    own = sim.primary_calendar_id(open_id)
    for n in range(14):
        sim.create_event(open_id, own, summary=f"Large {n}", description=chr(ord("a") + n) * 330_000)
    # WHEN the user syncs
    result = harness.sync(open_id)
    # THEN every event is stored whole, over several transactions
    assert (result.outcome, result.events_upserted) == ("synced", 14)
    items = harness.live_events(open_id, own)
    assert all("mirror_reduced" not in item and len(item["description"]) == 330_000 for item in items.values())
    assert harness.events.write_requests >= 2
