"""Ping coalescing on in-memory fakes: a burst of pushes starts one sync; a push during a sync makes it
loop once more instead of starting another; a failed hand-over leaves the user due."""

from __future__ import annotations

import pytest

from feishu_mirror.errors import LeaseLost
from feishu_mirror.models import Fence
from feishu_mirror.pings import CLAIM_SECONDS
from tests.fakes import FakeWorld


@pytest.fixture
def world() -> FakeWorld:
    world = FakeWorld()
    world.users.add("ou_a", due_at=int(world.clock()) + 3600)
    return world


def test_a_burst_of_pings_starts_one_sync_and_every_ping_is_remembered(world: FakeWorld) -> None:
    # GIVEN an idle user
    pings = world.pings()
    # WHEN three pushes arrive at once, two naming calendars whose events changed
    first = pings.dispatch(["ou_a"], "calendar_changed")
    second = pings.dispatch(["ou_a"], "event_changed", calendar_id="cal_1")
    third = pings.dispatch(["ou_a"], "event_changed", calendar_id="cal_2")
    # THEN one sync was started, the other pushes coalesced into it
    assert (first.started, second.coalesced, third.coalesced) == (["ou_a"], ["ou_a"], ["ou_a"])
    assert world.invoker.open_ids == ["ou_a"]
    # AND the user is dirty three times over, with both calendars, and claimed until the sync takes the lease
    # (due now, but the claim keeps the resync from starting a second sync meanwhile)
    user, now = world.users.items["ou_a"], int(world.clock())
    assert (user.dirty_seq, user.dirty_calendars) == (3, {"cal_1", "cal_2"})
    assert (user.pending_invoke_until, user.due_at, user.pending_ping_at) == (now + CLAIM_SECONDS, now, now)
    assert world.resync().sweep().skipped == 1


def test_a_ping_during_a_sync_is_not_a_second_sync_but_makes_the_running_one_loop(world: FakeWorld) -> None:
    # GIVEN a sync that holds the lease, having read dirty_seq 0
    now = int(world.clock())
    running = world.users.acquire_lease("ou_a", "sync-1", now, now + 300)
    assert running is not None
    # WHEN a push arrives
    outcome = world.pings().dispatch(["ou_a"], "calendar_changed")
    # THEN no sync is started: it coalesced into the running one
    assert (outcome.coalesced, world.invoker.invoked) == (["ou_a"], [])
    # AND the running sync cannot release with what it saw: it gets the fresh record and loops once more
    fence = Fence("ou_a", "sync-1")
    fresh = world.users.release_after_success(fence, now, seen_dirty_seq=running.dirty_seq, due_at=now + 60)
    assert fresh is not None
    assert fresh.dirty_seq == 1
    assert world.users.release_after_success(fence, now, seen_dirty_seq=fresh.dirty_seq, due_at=now + 60) is None
    # AND the push is then in the mirror: nothing is pending any more
    assert world.users.items["ou_a"].pending_ping_at is None


def test_a_sync_that_releases_between_the_two_writes_of_a_ping_is_started_again(world: FakeWorld) -> None:
    # GIVEN a running sync, and a push whose first write (mark dirty and claim) is refused because of it
    now = int(world.clock())
    assert world.users.acquire_lease("ou_a", "sync-1", now, now + 300) is not None
    assert not world.users.ping_and_claim("ou_a", now, now + CLAIM_SECONDS)
    # WHEN the sync releases just then (it had seen everything before this push)
    world.users.release_after_failure(Fence("ou_a", "sync-1"), code=None, message="", due_at=now, failed=False)
    # THEN the dispatch's fallback finds no sync running or pending and starts one
    outcome = world.pings().dispatch(["ou_a"], "calendar_changed")
    assert outcome.started == ["ou_a"]
    assert world.invoker.open_ids == ["ou_a"]


def test_a_pending_sync_that_never_started_is_started_again_once_its_claim_expires(world: FakeWorld) -> None:
    # GIVEN a ping whose sync was handed over but never ran (its claim lasts CLAIM_SECONDS)
    pings = world.pings()
    assert pings.dispatch(["ou_a"], "calendar_changed").started == ["ou_a"]
    world.clock.advance(CLAIM_SECONDS - 1)
    assert pings.dispatch(["ou_a"], "calendar_changed").coalesced == ["ou_a"]
    # WHEN the claim has expired
    world.clock.advance(1)
    # THEN the next ping starts a sync again
    assert pings.dispatch(["ou_a"], "calendar_changed").started == ["ou_a"]
    assert world.invoker.open_ids == ["ou_a", "ou_a"]


def test_unknown_and_inactive_users_are_ignored_and_a_failed_hand_over_leaves_the_user_due(world: FakeWorld) -> None:
    # GIVEN a user awaiting re-authorisation, an unknown one, and the Lambda API failing once
    world.users.add("ou_gone", status="reauth_required")
    world.invoker.fail = 1
    # WHEN all three are pinged
    outcome = world.pings().dispatch(["ou_gone", "ou_nobody", "ou_a"], "calendar_changed")
    # THEN the first two are ignored (nothing written), the third's sync could not be started
    assert (outcome.ignored, outcome.invoke_failed, outcome.started) == (["ou_gone", "ou_nobody"], ["ou_a"], [])
    assert world.users.items["ou_gone"].dirty_seq == 0
    # AND the third stays dirty and due when its claim runs out, so the scheduled resync starts it
    user = world.users.items["ou_a"]
    assert (user.dirty_seq, user.due_at) == (1, int(world.clock()) + CLAIM_SECONDS)
    world.clock.advance(CLAIM_SECONDS)
    assert world.resync().sweep().started == 1


def test_no_write_under_a_lease_that_was_lost(world: FakeWorld) -> None:
    # GIVEN a sync whose lease expired and was taken by another
    now = int(world.clock())
    assert world.users.acquire_lease("ou_a", "old", now, now + 10) is not None
    assert world.users.acquire_lease("ou_a", "new", now + 10, now + 300) is not None
    # WHEN the old one tries to release as successful THEN it learns it lost the lease, and writes nothing
    with pytest.raises(LeaseLost):
        world.users.release_after_success(Fence("ou_a", "old"), now + 11, seen_dirty_seq=0, due_at=now)
    assert world.users.items["ou_a"].lease_owner == "new"
