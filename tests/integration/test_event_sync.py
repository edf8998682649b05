"""Events (日程) through the one listing engine: against DynamoDB Local and the Feishu simulator."""

from __future__ import annotations

import time
from typing import Any

import pytest

from feishu_mirror.health import UserHealth
from feishu_mirror.models import EVENT_FIELDS, CollectionId
from local.feishu_sim import OAUTH_TOKEN_PATH, FeishuSimulator, delay, feishu_error, http_error
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration


def truth(sim: FeishuSimulator, open_id: str, calendar_id: str) -> dict[str, dict[str, object]]:
    """The calendar's live events in Feishu, reduced to the fields the mirror keeps."""
    return {
        e["event_id"]: {name: e[name] for name in EVENT_FIELDS if name in e} for e in sim.events(open_id, calendar_id)
    }


def mirrored(harness: Harness, open_id: str, calendar_id: str) -> dict[str, dict[str, object]]:
    """The live events the mirror holds, reduced the same way."""
    return {
        eid: {name: item[name] for name in EVENT_FIELDS if name in item}
        for eid, item in harness.live_events(open_id, calendar_id).items()
    }


def event_listing_calls(sim: FeishuSimulator, calendar_id: str) -> list[dict[str, str]]:
    """The queries of every event-list request for one calendar, in order."""
    path = f"/open-apis/calendar/v4/calendars/{calendar_id}/events"
    return [r.query for r in sim.requests_log if r.method == "GET" and r.path == path]


def test_the_first_sync_mirrors_the_events_of_every_readable_calendar_and_subscribes(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a user with events on the primary calendar, a shared calendar they read, and calendars
    # whose events they cannot list (free/busy only; a third-party calendar)
    open_id = harness.onboard("ou_events_first")
    own = sim.primary_calendar_id(open_id)
    shared = sim.create_calendar(open_id, summary="Team", role="reader")
    busy_only = sim.create_calendar(open_id, summary="Boss", role="free_busy_reader")
    google = sim.create_calendar(open_id, summary="Google", type="google", role="owner", is_third_party=True)
    for n in range(3):
        sim.create_event(open_id, own, summary=f"Mine {n}", location={"name": f"Room {n}"})
    sim.create_event(open_id, shared, summary="Standup", recurrence="FREQ=DAILY")
    # WHEN it syncs
    result = harness.sync(open_id)
    # THEN both readable calendars' events are mirrored field by field, and nothing else was listed
    assert (result.outcome, result.event_listings, result.events_upserted) == ("synced", 2, 4)
    assert mirrored(harness, open_id, own) == truth(sim, open_id, own)
    assert mirrored(harness, open_id, shared) == truth(sim, open_id, shared)
    assert event_listing_calls(sim, busy_only) == []
    assert event_listing_calls(sim, google) == []
    # AND each full listing asked with anchor_time (Feishu pages only then), never with start/end
    (first,) = event_listing_calls(sim, own)
    assert first.get("anchor_time") == "0"
    assert not {"start_time", "end_time", "sync_token"} & set(first)
    # AND the user is subscribed to each readable calendar's event changes
    assert sim.is_subscribed_to_events(open_id, own)
    assert sim.is_subscribed_to_events(open_id, shared)
    item = next(iter(harness.live_events(open_id, own).values()))
    assert (item["open_id"], item["calendar_id"]) == (open_id, own)


def test_a_pushed_event_change_lists_only_that_calendar_and_writes_only_what_changed(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a mirrored user with two readable calendars full of events
    open_id = harness.onboard("ou_events_push")
    own = sim.primary_calendar_id(open_id)
    shared = sim.create_calendar(open_id, summary="Team", role="writer")
    ids = [sim.create_event(open_id, own, summary=f"Event {n}") for n in range(6)]
    sim.create_event(open_id, shared, summary="Other")
    harness.sync(open_id)
    calls_before = len(event_listing_calls(sim, shared))
    # WHEN one event changes, one is deleted and one is created, and Feishu pushes the calendar's change
    sim.update_event(open_id, own, ids[0], summary="Renamed", start_time={"date": "2026-12-01"})
    sim.delete_event(open_id, own, ids[1])
    created = sim.create_event(open_id, own, summary="New")
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    result = harness.sync(open_id)
    # THEN one incremental listing of that calendar wrote exactly the three changes
    assert (result.event_listings, result.events_upserted, result.events_deleted) == (1, 2, 1)
    assert event_listing_calls(sim, own)[-1].get("sync_token")
    assert len(event_listing_calls(sim, shared)) == calls_before
    assert mirrored(harness, open_id, own) == truth(sim, open_id, own)
    items = harness.event_items(open_id, own)
    assert items[ids[1]]["deleted_at"]
    assert items[ids[1]]["expires_at"] > time.time()
    assert items[ids[0]]["start_time"] == {"date": "2026-12-01"}
    assert created in items
    # AND the calendar is no longer marked dirty
    assert not harness.user(open_id).get("dirty_calendars")


def test_an_expired_event_sync_token_relists_that_calendar_and_sweeps_what_is_gone(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a mirrored calendar with events, one of them deleted while the sync token expired
    open_id = harness.onboard("ou_events_190008")
    own = sim.primary_calendar_id(open_id)
    ids = [sim.create_event(open_id, own, summary=f"Event {n}") for n in range(8)]
    harness.sync(open_id)
    sim.expire_sync_tokens(open_id)
    sim.delete_event(open_id, own, ids[3])
    # WHEN its events are pushed as changed and it syncs
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    result = harness.sync(open_id)
    # THEN the calendar was listed in full again and the deleted event is a tombstone
    assert result.outcome == "synced"
    assert result.events_deleted == 1
    assert mirrored(harness, open_id, own) == truth(sim, open_id, own)
    listing = harness.client.get_item(
        TableName=harness.settings.event_listings_table,
        Key={"open_id": {"S": open_id}, "calendar_id": {"S": own}},
        ConsistentRead=True,
    )["Item"]
    assert listing["full_resync_count"]["N"] == "1"
    assert listing["sync_token"]["S"]


def test_a_large_calendar_is_listed_in_the_fewest_pages(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN a calendar with 230 events
    open_id = harness.onboard("ou_events_paged")
    own = sim.primary_calendar_id(open_id)
    for n in range(230):
        sim.create_event(open_id, own, summary=f"Event {n}")
    # WHEN it syncs with a page size of 50
    result = harness.sync(open_id, page_size=50)
    # THEN five pages (the floor: ceil(230 / 50)) mirrored every event, and a second sync lists once
    assert (result.event_pages, result.events_upserted) == (5, 230)
    assert mirrored(harness, open_id, own) == truth(sim, open_id, own)
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    again = harness.sync(open_id, page_size=50)
    assert (again.event_pages, again.events_upserted, again.events_deleted) == (1, 0, 0)


def test_an_event_listing_cut_short_resumes_from_its_checkpoint_then_catches_up(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a calendar with 120 events, and Feishu failing the third page of its event listing
    open_id = harness.onboard("ou_events_resume")
    own = sim.primary_calendar_id(open_id)
    for n in range(120):
        sim.create_event(open_id, own, summary=f"Event {n}")
    path = f"/open-apis/calendar/v4/calendars/{own}/events"
    sim.inject(path, delay(0), delay(0), *[http_error(500)] * 4)
    # WHEN it syncs with a page size of 50
    first = harness.sync(open_id, page_size=50)
    # THEN the sync failed after two pages, which are mirrored and checkpointed
    assert (first.outcome, first.event_pages) == ("failed", 2)
    assert len(harness.live_events(open_id, own)) == 100
    listing = harness.client.get_item(
        TableName=harness.settings.event_listings_table,
        Key={"open_id": {"S": open_id}, "calendar_id": {"S": own}},
        ConsistentRead=True,
    )["Item"]
    assert "checkpoint" in listing
    assert "sync_token" not in listing
    # WHEN an event changes meanwhile and the next sync runs
    created = sim.create_event(open_id, own, summary="Late")
    second = harness.sync(open_id, page_size=50)
    # THEN it resumed at the third page, then caught up incrementally; the mirror equals Feishu
    calls = event_listing_calls(sim, own)
    assert calls[-2].get("page_token")
    assert calls[-1].get("sync_token")
    assert second.outcome == "synced"
    assert second.event_pages == 2
    assert created in harness.live_events(open_id, own)
    assert mirrored(harness, open_id, own) == truth(sim, open_id, own)


def test_a_calendar_that_leaves_the_list_takes_its_events_and_a_new_one_brings_its_own(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a mirrored shared calendar with events
    open_id = harness.onboard("ou_events_gone")
    shared = sim.create_calendar(open_id, summary="Project", role="reader")
    ids = [sim.create_event(open_id, shared, summary=f"Event {n}") for n in range(3)]
    harness.sync(open_id)
    assert set(harness.live_events(open_id, shared)) == set(ids)
    # WHEN the calendar is deleted and another one appears, and Feishu pushes the calendar change
    sim.delete_calendar(open_id, shared)
    fresh = sim.create_calendar(open_id, summary="Launch", role="owner")
    sim.create_event(open_id, fresh, summary="Kick-off")
    harness.pings.dispatch([open_id], reason="calendar_changed")
    result = harness.sync(open_id)
    # THEN the gone calendar's events are tombstones and its listing state is forgotten
    assert harness.live_events(open_id, shared) == {}
    assert set(harness.event_items(open_id, shared)) == set(ids)
    listings = harness.client.query(
        TableName=harness.settings.event_listings_table,
        KeyConditionExpression="open_id = :o",
        ExpressionAttributeValues={":o": {"S": open_id}},
        ConsistentRead=True,
    )["Items"]
    assert shared not in {i["calendar_id"]["S"] for i in listings}
    # AND the new calendar's events are mirrored in the same sync
    assert result.events_deleted == 3
    assert mirrored(harness, open_id, fresh) == truth(sim, open_id, fresh)


def test_losing_access_to_a_calendar_between_two_listings_skips_it_without_failing_the_sync(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a user with events on the primary and on a shared calendar that answers its event listing
    # with 191002 (no access) once
    open_id = harness.onboard("ou_events_191002")
    own = sim.primary_calendar_id(open_id)
    shared = sim.create_calendar(open_id, summary="Locked", role="reader")
    sim.create_event(open_id, own, summary="Mine")
    for n in range(2):
        sim.create_event(open_id, shared, summary=f"Locked {n}")
    sim.inject(f"/open-apis/calendar/v4/calendars/{shared}/events", feishu_error(191002, 403))
    # WHEN it syncs
    result = harness.sync(open_id)
    # THEN the sync succeeds with the primary calendar's events mirrored and no error recorded,
    # and the locked calendar's events are not (yet) mirrored
    assert result.outcome == "synced"
    assert "last_error_code" not in harness.user(open_id)
    assert len(mirrored(harness, open_id, own)) == 1
    assert mirrored(harness, open_id, own) == truth(sim, open_id, own)
    assert harness.live_events(open_id, shared) == {}
    # AND the locked calendar stays due: the next sync lists it (and only it) and mirrors its events
    second = harness.sync(open_id)
    assert (second.outcome, second.event_listings) == ("synced", 1)
    assert len(mirrored(harness, open_id, shared)) == 2
    assert mirrored(harness, open_id, shared) == truth(sim, open_id, shared)


def test_a_calendar_feishu_will_not_list_fails_the_sync_after_the_others_are_listed(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a user with three readable calendars; the one sorted first answers every event listing
    # with an error retrying cannot fix
    open_id = harness.onboard("ou_events_isolated")
    calendars = sorted(
        [sim.primary_calendar_id(open_id)] + [sim.create_calendar(open_id, summary=f"C{n}") for n in range(2)]
    )
    broken, healthy = calendars[0], calendars[1:]
    for calendar_id in calendars:
        sim.create_event(open_id, calendar_id, summary=f"In {calendar_id}")
    sim.inject(f"/open-apis/calendar/v4/calendars/{broken}/events", *[feishu_error(190002, 400, "bad request")] * 3)
    # WHEN it syncs
    result = harness.sync(open_id)
    # THEN the other calendars' events are mirrored all the same
    for calendar_id in healthy:
        assert len(mirrored(harness, open_id, calendar_id)) == 1
        assert mirrored(harness, open_id, calendar_id) == truth(sim, open_id, calendar_id)
    assert harness.live_events(open_id, broken) == {}
    # AND the sync failed with that calendar's error, recorded on the user for operators
    assert (result.outcome, result.error_code, result.event_listings) == ("failed", 190002, 3)
    user = harness.user(open_id)
    assert user["last_error_code"] == 190002
    assert broken in user["last_error_message"]
    # WHEN Feishu lists it again THEN the next sync lists only that calendar and succeeds
    sim.clear_faults()
    second = harness.sync(open_id)
    assert (second.outcome, second.event_listings) == ("synced", 1)
    assert mirrored(harness, open_id, broken) == truth(sim, open_id, broken)


def test_a_calendar_whose_first_listing_died_before_its_commit_still_takes_its_events_when_it_goes(
    harness: Harness, sim: FeishuSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a new shared calendar whose first event listing wrote its events, then the invocation died
    # (a timeout, a crash) before the listing was committed
    open_id = harness.onboard("ou_events_orphan")
    shared = sim.create_calendar(open_id, summary="Short-lived", role="reader")
    ids = [sim.create_event(open_id, shared, summary=f"Event {n}") for n in range(3)]
    commit = harness.listings.commit

    def die_on_that_calendar(fence: Any, now: int, collection: CollectionId, outcome: Any) -> None:
        if collection.calendar_id == shared:
            raise RuntimeError("the invocation died")
        commit(fence, now, collection, outcome)

    monkeypatch.setattr(harness.listings, "commit", die_on_that_calendar)
    with pytest.raises(RuntimeError):
        harness.sync(open_id)
    monkeypatch.undo()
    assert set(harness.live_events(open_id, shared)) == set(ids)
    # WHEN the calendar is deleted and Feishu pushes the calendar change
    sim.delete_calendar(open_id, shared)
    harness.pings.dispatch([open_id], reason="calendar_changed")
    result = harness.sync(open_id)
    # THEN its events are tombstones: no event of a gone calendar stays live
    assert result.outcome == "synced"
    assert harness.live_events(open_id, shared) == {}
    assert set(harness.event_items(open_id, shared)) == set(ids)


@pytest.mark.parametrize("paging", ["sync_token", "page_token", "none"])
def test_an_increment_longer_than_a_page_lands_whole_however_feishu_continues_it(
    harness: Harness, sim: FeishuSimulator, paging: Any
) -> None:
    # GIVEN a mirrored calendar of 60 events, then 120 changes: 20 updates, 40 deletions, 60 new events
    open_id = harness.onboard(f"ou_events_long_{paging}")
    own = sim.primary_calendar_id(open_id)
    ids = [sim.create_event(open_id, own, summary=f"Event {n}") for n in range(60)]
    harness.sync(open_id, page_size=50)
    for event_id in ids[:20]:
        sim.update_event(open_id, own, event_id, summary=f"Moved {event_id}")
    for event_id in ids[20:60]:
        sim.delete_event(open_id, own, event_id)
    for n in range(60):
        sim.create_event(open_id, own, summary=f"New {n}")
    # AND Feishu continuing an increment by each page's sync token (as its docs imply: page tokens only
    # with anchor_time), by page tokens, or not at all
    sim.incremental_event_paging = paging
    calls_before = len(event_listing_calls(sim, own))
    # WHEN the calendar's events are pushed and it syncs at a page size of 50
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    result = harness.sync(open_id, page_size=50)
    # THEN the mirror equals Feishu
    assert result.outcome == "synced"
    assert mirrored(harness, open_id, own) == truth(sim, open_id, own)
    assert len(harness.live_events(open_id, own)) == 80
    calls = event_listing_calls(sim, own)[calls_before:]
    if paging == "sync_token":
        # AND three incremental calls, each from the previous page's sync token, wrote exactly the changes
        assert [bool(c.get("sync_token")) and "page_token" not in c for c in calls] == [True, True, True]
        assert len({c["sync_token"] for c in calls}) == 3
        assert (result.events_upserted, result.events_deleted) == (80, 40)
    elif paging == "page_token":
        assert [("sync_token" in c, "page_token" in c) for c in calls] == [(True, False), (False, True), (False, True)]
    else:
        # AND an increment that cannot go on is replaced by a full listing (anchor_time, page tokens)
        assert calls[0].get("sync_token")
        assert calls[1].get("anchor_time") == "0"
    # AND the committed token is the last page's: the next sync lists once and writes nothing
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    again = harness.sync(open_id, page_size=50)
    assert (again.event_pages, again.events_upserted, again.events_deleted) == (1, 0, 0)


def test_a_user_is_due_again_when_the_oldest_calendar_events_are_due_not_later(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a user whose events were listed at t0
    open_id = harness.onboard("ou_events_due")
    sim.create_event(open_id, sim.primary_calendar_id(open_id), summary="Standing meeting")
    harness.sync(open_id)
    listed_at = int(time.time())
    stale = harness.settings.stale_after_seconds
    # WHEN a calendar-list push makes it sync three hours later (events not pushed, so not listed)
    sim.create_calendar(open_id, summary="Unreadable", role="free_busy_reader")
    harness.pings.dispatch([open_id], reason="calendar_changed")
    later = harness.sync(open_id, clock_offset=3 * 3600)
    # THEN the user is due when the events listed at t0 become stale, not a full period after the push
    assert later.event_listings == 0
    assert listed_at + stale - 5 <= harness.user(open_id)["due_at"] <= listed_at + stale + 5


def test_a_push_for_a_calendar_whose_events_are_not_mirrored_is_forgotten(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a user with a calendar they only see free/busy of, pushed as having changed events
    open_id = harness.onboard("ou_events_unreadable")
    busy = sim.create_calendar(open_id, summary="Boss", role="free_busy_reader")
    harness.sync(open_id)
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=busy)
    assert harness.user(open_id)["dirty_calendars"] == {busy}
    # WHEN it syncs THEN nothing is listed for it and it leaves the dirty set
    result = harness.sync(open_id)
    assert event_listing_calls(sim, busy) == []
    assert result.event_listings == 0
    assert not harness.user(open_id).get("dirty_calendars")


def test_a_held_mass_deletion_of_events_shows_in_the_user_health_until_it_is_confirmed(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a calendar of 10 mirrored events, 8 of which vanish while its sync token expires
    open_id = harness.onboard("ou_events_mass")
    own = sim.primary_calendar_id(open_id)
    ids = [sim.create_event(open_id, own, summary=f"Event {n}") for n in range(10)]
    harness.sync(open_id)
    for event_id in ids[:8]:
        sim.delete_event(open_id, own, event_id)
    sim.expire_sync_tokens(open_id)
    harness.pings.dispatch([open_id], reason="event_changed", calendar_id=own)
    # WHEN it syncs THEN the deletions are held, and the user's health says so (not "ok")
    held = harness.sync(open_id)
    assert (held.outcome, held.events_deleted, held.held_deletions) == ("synced", 0, 8)
    assert len(harness.live_events(open_id, own)) == 10
    user = harness.user(open_id)
    assert user["held_event_deletions"] == 8
    health = UserHealth.from_item(user, now=int(time.time()), stale_after_seconds=harness.settings.stale_after_seconds)
    assert (health.state, health.held_deletions) == ("held_deletions", 8)
    # WHEN a full listing after the confirmation delay still misses them THEN they go and so does the hold
    later = harness.settings.mass_delete_confirm_seconds + 1
    confirmed = harness.sync(open_id, clock_offset=later)
    assert (confirmed.events_deleted, confirmed.held_deletions) == (8, 0)
    assert mirrored(harness, open_id, own) == truth(sim, open_id, own)
    user = harness.user(open_id)
    assert "held_event_deletions" not in user
    assert UserHealth.from_item(user, now=int(time.time()) + later, stale_after_seconds=10**9).state == "ok"


def test_an_access_token_refused_even_after_a_refresh_fails_the_sync_at_once(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a user with three readable calendars; the first one's listing refuses the access token
    # twice (before and after the refresh)
    open_id = harness.onboard("ou_events_token_refused")
    calendars = sorted(
        [sim.primary_calendar_id(open_id)] + [sim.create_calendar(open_id, summary=f"C{n}") for n in range(2)]
    )
    expired = feishu_error(99991677, 400, "Authentication token expired")
    sim.inject(f"/open-apis/calendar/v4/calendars/{calendars[0]}/events", expired, expired)
    refreshes_before = sum(1 for r in sim.requests_log if r.path == OAUTH_TOKEN_PATH)
    # WHEN it syncs
    result = harness.sync(open_id)
    # THEN it fails with that error after one refresh, without refreshing for (or retrying) each other
    # calendar: their listings, started beside the first, ran at most once
    assert (result.outcome, result.error_code) == ("failed", 99991677)
    assert sum(1 for r in sim.requests_log if r.path == OAUTH_TOKEN_PATH) - refreshes_before == 1
    for calendar_id in calendars[1:]:
        assert len(event_listing_calls(sim, calendar_id)) <= 1
