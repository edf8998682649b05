"""The scheduled resync's selection on in-memory fakes: due users oldest first and at most the run's
limit, users with a sync running or pending skipped, users awaiting re-authorisation left alone."""

from __future__ import annotations

import pytest

from feishu_mirror.models import Fence
from feishu_mirror.observability import metrics
from feishu_mirror.resync import CLAIM_SECONDS
from tests.fakes import FakeWorld


@pytest.fixture
def world() -> FakeWorld:
    return FakeWorld()


def test_due_users_are_started_oldest_first_up_to_the_limit(world: FakeWorld) -> None:
    # GIVEN five users due at different times, and two not due yet
    now = int(world.clock())
    for n, due_at in enumerate((now - 50, now - 10, now - 40, now, now - 30)):
        world.users.add(f"ou_due_{n}", due_at=due_at)
    world.users.add("ou_later", due_at=now + 1)
    world.users.add("ou_much_later", due_at=now + 3600)
    # WHEN a run may start three
    outcome = world.resync(max_users=3).sweep()
    # THEN the three that waited longest are started, in that order
    assert (outcome.due, outcome.started, outcome.skipped) == (3, 3, 0)
    assert sorted(world.invoker.open_ids) == ["ou_due_0", "ou_due_2", "ou_due_4"]
    # AND the next run starts the other two due ones (the started ones are claimed, so no longer due now)
    world.invoker.invoked.clear()
    assert world.resync(max_users=3).sweep().started == 2
    assert sorted(world.invoker.open_ids) == ["ou_due_1", "ou_due_3"]


def test_users_with_a_sync_running_or_pending_are_skipped(world: FakeWorld) -> None:
    # GIVEN three due users: one whose sync runs, one whose sync was just started, one idle
    now = int(world.clock())
    for open_id in ("ou_running", "ou_pending", "ou_idle"):
        world.users.add(open_id, due_at=now - 1)
    assert world.users.acquire_lease("ou_running", "sync-1", now, now + 300) is not None
    assert world.users.claim_invocation("ou_pending", now, now + 60)
    world.users.items["ou_pending"].due_at = now - 1  # due again, as if the index were behind
    # WHEN the resync runs
    outcome = world.resync().sweep()
    # THEN only the idle one is started; the others are skipped
    assert (outcome.started, outcome.skipped) == (1, 2)
    assert world.invoker.open_ids == ["ou_idle"]


def test_users_awaiting_reauthorisation_are_not_started_but_counted(world: FakeWorld) -> None:
    # GIVEN a user whose sync found their refresh token refused (they left the due index)
    now = int(world.clock())
    world.users.add("ou_refused", due_at=now - 100)
    assert world.users.acquire_lease("ou_refused", "sync-1", now, now + 300) is not None
    marked = world.users.mark_reauth_required(
        Fence("ou_refused", "sync-1"),
        now,
        token_version=1,
        code=20064,
        message="revoked",
        cause="refresh_token_refused",
    )
    assert marked
    world.users.add("ou_fine", due_at=now - 1)
    # WHEN the resync runs
    metrics.clear_metrics()
    outcome = world.resync().sweep()
    # THEN only the other user is started, and the gauge counts the one awaiting re-authorisation
    assert (outcome.due, world.invoker.open_ids) == (1, ["ou_fine"])
    assert _metric("UsersAwaitingReauth") == [1.0]
    metrics.clear_metrics()


def test_a_failed_invoke_is_counted_and_the_user_is_due_again_when_the_claim_runs_out(world: FakeWorld) -> None:
    # GIVEN a due user and the Lambda API refusing the hand-over
    now = int(world.clock())
    world.users.add("ou_a", due_at=now - 1)
    world.invoker.fail = 1
    # WHEN the resync runs THEN the failure is counted, and the claim keeps the user off the next runs
    assert world.resync().sweep().invoke_failed == 1
    assert world.resync().sweep().due == 0
    # AND once the claim runs out the user is due again and started
    world.clock.advance(CLAIM_SECONDS)
    assert world.resync().sweep().started == 1


def _metric(name: str) -> list[float]:
    return list(metrics.metric_set.get(name, {}).get("Value", []))


def test_a_claim_that_lapsed_while_queued_never_makes_a_second_sync(world: FakeWorld) -> None:
    # GIVEN a mirrored user whose listings went stale, claimed by a resync run, and the invocation waiting in
    # Lambda's queue (throttled) longer than the claim, so that a later run claims and invokes again
    open_id = world.onboard("ou_queued")
    assert world.sync(open_id).outcome == "synced"
    world.clock.advance(world.settings.stale_after_seconds + 1)
    assert world.resync().sweep().started == 1
    world.clock.advance(CLAIM_SECONDS + 1)
    assert world.resync().sweep().started == 1
    first_claim, second_claim = world.invoker.claims
    # WHEN both invocations run, one after the other, a moment later
    world.clock.advance(1)
    first = world.sync(open_id, claimed_at=first_claim)
    calls = len(world.feishu.calls)
    second = world.sync(open_id, claimed_at=second_claim)
    # THEN the first syncs the user and the second finds them no longer due: no second sync, no Feishu call
    assert (first.outcome, second.outcome) == ("synced", "not_due")
    assert len(world.feishu.calls) == calls
    # AND a push that arrives meanwhile is still served by a resync's invocation
    world.pings().dispatch([open_id], "push", calendar_id=f"{open_id}-primary")
    assert world.sync(open_id, claimed_at=second_claim).outcome == "synced"


def test_a_sync_that_ended_in_the_second_of_the_claim_does_not_count_as_after_it(world: FakeWorld) -> None:
    # GIVEN a user synced just now, then made due (a change whose push was lost) and claimed in that second
    open_id = world.onboard("ou_same_second")
    assert world.sync(open_id).outcome == "synced"
    world.users.items[open_id].due_at = int(world.clock()) - 1
    assert world.resync().sweep().started == 1
    # WHEN the resync's invocation runs THEN it syncs: the earlier sync may have begun before the change
    assert world.sync(open_id, claimed_at=world.invoker.claims[0]).outcome == "synced"
