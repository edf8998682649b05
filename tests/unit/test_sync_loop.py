"""The sync loop's passes on in-memory fakes (tables, Feishu, KMS): what one invocation lists, writes and
leaves on the user, and how pings, interruptions, expired tokens and a lost lease change that."""

from __future__ import annotations

import dataclasses

import pytest

from feishu_mirror.config import Settings
from feishu_mirror.errors import FeishuError
from feishu_mirror.models import CollectionId
from feishu_mirror.sync import MAX_PASSES
from tests.fakes import FakeWorld

PRIMARY = "ou_a-primary"


@pytest.fixture
def world() -> FakeWorld:
    # GIVEN a user with their primary calendar (two events), a shared calendar they read (one event) and
    # one they only see free/busy of (whose events are not theirs to mirror)
    world = FakeWorld(dataclasses.replace(Settings(), page_size=2))
    world.onboard("ou_a")
    world.feishu.put_event("ou_a", PRIMARY, "ev_1", summary="Standup")
    world.feishu.put_event("ou_a", PRIMARY, "ev_2", summary="Review")
    world.feishu.put_calendar("ou_a", "cal_team", summary="Team")
    world.feishu.put_event("ou_a", "cal_team", "ev_3", summary="Offsite")
    world.feishu.put_calendar("ou_a", "cal_busy", summary="Boss", role="free_busy_reader")
    return world


def test_a_first_sync_lists_everything_once_subscribes_and_releases(world: FakeWorld) -> None:
    # WHEN the user is synced
    result = world.sync("ou_a")
    # THEN one pass listed the calendar list in full (two pages of two) and the readable calendars' events
    assert (result.outcome, result.kind, result.passes, result.pages) == ("synced", "full", 1, 2)
    assert (result.upserted, result.event_listings, result.events_upserted) == (3, 2, 3)
    assert world.live_calendars("ou_a") == {PRIMARY, "cal_team", "cal_busy"}
    assert world.live_events("ou_a", PRIMARY) == {"ev_1", "ev_2"}
    assert world.live_events("ou_a", "cal_team") == {"ev_3"}
    assert set(world.listings.event_listings("ou_a")) == {PRIMARY, "cal_team"}
    # AND it subscribed to the list's and each readable calendar's changes, and left the user due later
    feishu_user = world.feishu.users["ou_a"]
    assert (feishu_user.subscribed, feishu_user.subscribed_calendars) == (True, {PRIMARY, "cal_team"})
    user = world.users.items["ou_a"]
    assert user.lease_owner is None
    assert user.due_at == int(world.clock()) + world.settings.stale_after_seconds
    assert (user.calendar_list.mirrored, user.calendar_list.checkpoint) == (3, None)
    # AND a second sync right after asks Feishu for the calendar list's changes only, and writes nothing
    calls = len(world.feishu.calls)
    again = world.sync("ou_a")
    assert (again.kind, again.upserted, again.event_listings) == ("incremental", 0, 0)
    assert world.feishu.calls[calls:] == ["list_calendars"]


def test_a_ping_during_a_sync_makes_it_run_one_more_pass_instead_of_a_second_sync(world: FakeWorld) -> None:
    world.sync("ou_a")
    world.clock.advance(60)
    pings = world.pings()
    pushed: list[str] = []

    def change_while_listing(method: str) -> None:
        if method == "list_calendars" and not pushed:  # a change, and its push, while the list is fetched
            pushed.append(world.feishu.put_calendar("ou_a", "cal_new", summary="Made during the sync"))
            assert pings.dispatch(["ou_a"], "calendar_changed").coalesced == ["ou_a"]

    world.feishu.before_call = change_while_listing
    # WHEN a sync runs and the push arrives during its first pass
    result = world.sync("ou_a")
    # THEN the push coalesced: no sync was started for it, and the running one made a second pass
    assert world.invoker.invoked == []
    assert (result.outcome, result.passes) == ("synced", 2)
    # AND the change is in the mirror, and the user has nothing pending
    assert "cal_new" in world.live_calendars("ou_a")
    assert world.users.items["ou_a"].pending_ping_at is None


def test_pings_that_keep_coming_stop_the_loop_after_its_passes_and_leave_the_user_due(world: FakeWorld) -> None:
    world.sync("ou_a")
    pings = world.pings()

    def push_with_every_listing(method: str) -> None:
        if method == "list_calendars":
            pings.dispatch(["ou_a"], "calendar_changed")

    world.feishu.before_call = push_with_every_listing
    # WHEN every pass brings another push
    result = world.sync("ou_a")
    # THEN the sync stops after MAX_PASSES and leaves the user due now, for the next sync to carry on
    assert (result.outcome, result.passes) == ("synced", MAX_PASSES)
    user = world.users.items["ou_a"]
    assert (user.lease_owner, user.due_at) == (None, int(world.clock()))


def test_an_interrupted_listing_resumes_from_its_checkpoint_then_catches_up(world: FakeWorld) -> None:
    # GIVEN a first sync whose second page of the calendar list fails
    world.feishu.put_calendar("ou_a", "cal_x", summary="X")
    pages: list[str] = []

    def fail_second_page(method: str) -> None:
        if method == "list_calendars":
            pages.append(method)
            if len(pages) == 2:
                raise FeishuError(1500, "server busy")

    world.feishu.before_call = fail_second_page
    assert world.sync("ou_a").outcome == "failed"
    checkpoint = world.users.items["ou_a"].calendar_list.checkpoint
    assert checkpoint is not None
    assert len(checkpoint.seen_ids) == 2
    # AND a calendar its first page already listed changes meanwhile
    world.feishu.before_call = None
    first_page = sorted(checkpoint.seen_ids)[0]
    world.feishu.put_calendar("ou_a", first_page, summary="changed after the interruption")
    world.clock.advance(3600)  # past the failure's backoff
    # WHEN the next sync runs
    result = world.sync("ou_a")
    # THEN it resumed the listing (kind "resume"), then caught the change with an incremental pass
    assert (result.outcome, result.kind, result.passes) == ("synced", "resume", 2)
    stored = world.calendars.live(CollectionId("ou_a"))[first_page]
    assert stored.fields["summary"] == "changed after the interruption"
    assert world.live_calendars("ou_a") == world.feishu.truth("ou_a")


def test_an_expired_access_token_is_refreshed_once_and_the_new_pair_stored(world: FakeWorld) -> None:
    world.sync("ou_a")
    version = world.users.items["ou_a"].token_version
    world.feishu.expire_access_token("ou_a")
    world.feishu.put_event("ou_a", "cal_team", "ev_4", summary="New")
    world.pings().dispatch(["ou_a"], "event_changed", calendar_id="cal_team")
    # WHEN the sync meets the expired token
    result = world.sync("ou_a")
    # THEN it refreshed (one refresh), stored the rotated pair under the next version, and synced
    assert result.outcome == "synced"
    assert world.feishu.calls.count("refresh_access_token") == 1
    user = world.users.items["ou_a"]
    assert (user.token_version, user.refresh_started_version) == (version + 1, None)
    opened = world.vault.open("ou_a", user.access_token, user.refresh_token)
    assert opened.refresh_token == world.feishu.users["ou_a"].refresh_token
    assert "ev_4" in world.live_events("ou_a", "cal_team")


def test_an_expired_sync_token_relists_in_full_and_sweeps_what_feishu_no_longer_has(world: FakeWorld) -> None:
    world.sync("ou_a")
    # GIVEN Feishu forgot the stored sync token, and a calendar went without a change record
    state = world.users.items["ou_a"].calendar_list
    assert state.sync_token is not None
    world.feishu.expired_sync_tokens.add(state.sync_token)
    del world.feishu.users["ou_a"].calendars.items["cal_busy"]
    # WHEN the user is synced
    result = world.sync("ou_a")
    # THEN the list was listed in full again and the calendar Feishu no longer lists is a tombstone
    assert (result.outcome, result.kind, result.deleted) == ("synced", "full", 1)
    assert world.live_calendars("ou_a") == {PRIMARY, "cal_team"}
    assert world.users.items["ou_a"].full_resync_count == 1


def test_a_calendar_that_becomes_unreadable_takes_its_events_with_it(world: FakeWorld) -> None:
    world.sync("ou_a")
    # WHEN the user's access to the team calendar drops to free/busy
    world.feishu.put_calendar("ou_a", "cal_team", summary="Team", role="free_busy_reader")
    result = world.sync("ou_a")
    # THEN its events are tombstones and its listing state is gone
    assert (result.outcome, result.events_deleted) == ("synced", 1)
    assert world.live_events("ou_a", "cal_team") == set()
    assert set(world.listings.event_listings("ou_a")) == {PRIMARY}


def test_a_sync_that_loses_its_lease_stops_writing(world: FakeWorld) -> None:
    # GIVEN a sync whose lease is taken over while it lists the events (it ran past its lease)
    def steal(method: str) -> None:
        if method == "list_events":
            user = world.users.items["ou_a"]
            user.lease_owner, user.lease_expires_at = "another-sync", int(world.clock()) + 300

    world.feishu.before_call = steal
    # WHEN it goes on THEN its first event write fails on the fence: nothing of the events is written
    result = world.sync("ou_a")
    assert result.outcome == "failed"
    assert world.live_events("ou_a", PRIMARY) == set()
    assert world.users.items["ou_a"].lease_owner == "another-sync"
