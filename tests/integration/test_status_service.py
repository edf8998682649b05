"""Operator status on DynamoDB Local: the health reads never return a token, pagination covers
every user once, a user's page matches the mirror, and resync coalesces like a push."""

from __future__ import annotations

import time

import pytest

from feishu_mirror.agenda import Window
from feishu_mirror.errors import UnknownUser
from feishu_mirror.health import record_push_to_mirror_lag
from feishu_mirror.pings import PingDispatcher
from feishu_mirror.status import ReauthorizationPending, StatusRequestInvalid, StatusService
from local.feishu_sim import feishu_error
from tests.integration.grants import dynamodb_calls, function_grants
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration

SECRET_ATTRIBUTES = ("access_token", "refresh_token", "sync_token", "lease_owner", "union_id", "scope")


def service(harness: Harness, pings: PingDispatcher | None = None) -> StatusService:
    if pings is None:
        return harness.services.status
    return StatusService(
        users=harness.health,
        calendars=harness.calendars,
        pings=pings,
        stale_after_seconds=harness.settings.stale_after_seconds,
        event_listings=harness.listings,
    )


class FailingInvoker:
    """The Lambda API is down."""

    def invoke(self, open_id: str, reason: str, *, delivery_id: str = "", claimed_at: int = 0) -> None:
        raise ConnectionError("no Lambda API")


def test_health_reads_page_through_every_user_once_and_never_return_a_token(harness: Harness) -> None:
    # GIVEN five synced users (tokens, sync tokens stored) and one mid-listing with a checkpoint
    users = [harness.onboard(f"ou_page_{n}", extra_calendars=1) for n in range(5)]
    for open_id in users:
        assert harness.sync(open_id).outcome == "synced"
    harness.set_user(users[0], checkpoint={"kind": "full", "page_token": "pt-secret", "seen_ids": [], "started_at": 1})
    tokens = {harness.user(u)["sync_token"] for u in users} | {t for u in users for t in harness.tokens(u) if t}
    # WHEN the health pages are read two at a time
    seen: list[str] = []
    start: str | None = None
    pages = 0
    while True:
        items, start = harness.health.list_health(2, start)
        pages += 1
        seen += [item["open_id"] for item in items]
        for item in items:
            # THEN no secret attribute or value comes back, and the counters do
            assert not set(item) & set(SECRET_ATTRIBUTES)
            assert not {str(v) for v in item.values()} & tokens
            assert "pt-secret" not in repr(item)
            assert item["calendars_mirrored"] == 2  # the primary calendar and one more
        if start is None:
            break
    assert sorted(seen) == sorted(users)
    assert pages >= 3
    resuming = harness.health.get_health(users[0])
    assert resuming is not None
    assert resuming["checkpoint"] == {"kind": "full", "started_at": 1}


def test_the_user_view_matches_the_mirror_and_counts_tombstones_and_full_resyncs(harness: Harness) -> None:
    # GIVEN a synced user, one of whose calendars was deleted, whose sync token then expired
    open_id = harness.onboard("ou_view", extra_calendars=3)
    harness.sync(open_id)
    doomed = next(c["calendar_id"] for c in harness.sim.calendars(open_id) if c.get("summary") == "Calendar 1")
    harness.sim.delete_calendar(open_id, doomed)
    harness.sync(open_id)
    harness.sim.expire_sync_tokens(open_id)
    harness.sync(open_id)
    # WHEN the operator opens the user's view
    view = service(harness).user(open_id)
    # THEN it shows exactly Feishu's live calendars, one tombstone and the health the sync recorded
    truth = {c["calendar_id"] for c in harness.sim.calendars(open_id)}
    assert {c.calendar_id for c in view.calendars} == truth
    assert view.tombstones == 1
    health = view.health
    assert (health.calendars_mirrored, health.full_resync_count, health.state) == (len(truth), 1, "ok")
    assert health.subscribed_at is not None
    assert health.last_attempt_at is not None
    assert not health.reauth_required
    stored = harness.user(open_id)
    for secret in (*harness.tokens(open_id), stored["sync_token"]):
        assert secret
        assert secret not in repr(view.as_dict())


def test_the_overview_puts_users_needing_attention_first(harness: Harness) -> None:
    fine = harness.onboard("ou_fine")
    harness.sync(fine)
    broken = harness.onboard("ou_broken")
    harness.set_user(broken, status="reauth_required", reauth_required_at=int(time.time()))
    view = service(harness).overview(limit=10)
    assert [u.open_id for u in view.users] == [broken, fine]
    assert dict(view.states) == {"reauth_required": 1, "ok": 1}


def test_resync_starts_one_sync_and_coalesces_a_second_request(harness: Harness) -> None:
    # GIVEN a synced user with a change Feishu never pushed
    open_id = harness.onboard("ou_resync")
    harness.sync(open_id)
    harness.sim.create_calendar(open_id, summary="never pushed")
    status = service(harness)
    # WHEN the operator asks twice before the sync runs
    first = status.resync(open_id, requested_by="arn:aws:iam::1:user/ops")
    second = status.resync(open_id)
    # THEN one sync was started and the second request joined it
    assert (first.outcome, second.outcome) == ("started", "coalesced")
    assert harness.invoked == [open_id]
    assert harness.user(open_id)["due_at"] <= int(time.time()) + 120
    # AND the sync it started brings the change in
    assert harness.sync(open_id).outcome == "synced"
    harness.assert_mirror_matches(open_id)


def test_resync_refuses_unknown_users_users_needing_consent_and_bad_ids(harness: Harness) -> None:
    status = service(harness)
    with pytest.raises(UnknownUser):
        status.resync("ou_nobody")
    gone = harness.onboard("ou_gone")
    harness.set_user(gone, status="reauth_required")
    with pytest.raises(ReauthorizationPending):
        status.resync(gone)
    with pytest.raises(StatusRequestInvalid):
        status.resync("ou_a/../b")
    assert harness.invoked == []


def test_a_failed_invoke_is_reported_and_leaves_the_user_due(harness: Harness) -> None:
    open_id = harness.onboard("ou_invoke_fails")
    harness.sync(open_id)
    pings = PingDispatcher(harness.schedule, FailingInvoker())
    assert service(harness, pings).resync(open_id).outcome == "invoke_failed"
    assert harness.user(open_id)["due_at"] <= int(time.time()) + 120  # the schedule starts it


def test_the_lag_runs_from_the_earliest_push_even_when_later_ones_coalesced(harness: Harness) -> None:
    # GIVEN a synced user, pushed three times: at t0, 2 s later and 4 s later (the later ones coalesce)
    open_id = harness.onboard("ou_lag")
    harness.sync(open_id)
    t0 = int(time.time())
    for offset in (0, 2, 4):
        harness.schedule.mark_dirty(open_id, t0 + offset)
    assert harness.user(open_id)["pending_ping_at"] == t0
    # WHEN the sync brings them into the mirror
    result = harness.sync(open_id)
    # THEN the result names the earliest push, the lag runs from it, and nothing is pending any more
    assert result.pushed_at == t0
    now = time.time()
    assert record_push_to_mirror_lag(result, now=now) == pytest.approx(now - t0)
    assert "pending_ping_at" not in harness.user(open_id)
    # AND a later sync with no push in between measures nothing
    assert record_push_to_mirror_lag(harness.sync(open_id), now=time.time()) is None


def test_a_push_that_waited_out_a_failure_is_measured_from_when_it_came(harness: Harness) -> None:
    # GIVEN a push at t0 whose first sync fails (Feishu refuses the listing)
    open_id = harness.onboard("ou_lag_failure")
    harness.sync(open_id)
    t0 = int(time.time()) - 30
    harness.schedule.mark_dirty(open_id, t0)
    harness.sim.inject("/open-apis/calendar/v4/calendars", feishu_error(190002, 400, "bad request"))
    assert harness.sync(open_id).outcome == "failed"
    assert harness.user(open_id)["pending_ping_at"] == t0
    # WHEN the retry succeeds THEN it is measured from t0
    result = harness.sync(open_id)
    assert (result.outcome, result.pushed_at) == ("synced", t0)


def test_the_user_view_shows_each_calendars_event_counts_but_never_its_sync_token(harness: Harness) -> None:
    # GIVEN a synced user with two events on the primary calendar and a calendar they only see free/busy of
    open_id = harness.onboard("ou_view_events")
    sim = harness.sim
    primary = sim.primary_calendar_id(open_id)
    busy = sim.create_calendar(open_id, summary="Boss", role="free_busy_reader")
    sim.create_event(open_id, primary, summary="One")
    sim.create_event(open_id, primary, summary="Two")
    harness.sync(open_id)
    sync_token = harness.client.get_item(
        TableName=harness.settings.event_listings_table,
        Key={"open_id": {"S": open_id}, "calendar_id": {"S": primary}},
    )["Item"]["sync_token"]["S"]
    # WHEN the operator opens the user's view
    view = service(harness).user(open_id).as_dict()
    # THEN the primary calendar shows its two events and when they were listed; the other shows none
    calendars = {c["calendar_id"]: c for c in view["calendars"]}
    assert calendars[primary]["events"]["events_mirrored"] == 2
    assert calendars[primary]["events"]["synced_at"] >= int(time.time()) - 60
    assert calendars[busy]["events"] is None
    assert sync_token not in repr(view)
    assert "sync_token" not in repr(view)


def test_everything_the_status_service_calls_is_granted_to_the_status_function_and_no_more(harness: Harness) -> None:
    # GIVEN synced users (one with events), a user who must consent again, and the status service
    ada = harness.onboard("ou_grants_ada", extra_calendars=2)
    primary = harness.sim.primary_calendar_id(ada)
    harness.sim.create_event(ada, primary, summary="Standup")
    harness.sync(ada)
    gone = harness.onboard("ou_grants_gone")
    harness.set_user(gone, status="reauth_required")
    unstartable = harness.onboard("ou_grants_unstartable")
    status = service(harness)
    failing = service(harness, PingDispatcher(harness.schedule, FailingInvoker()))
    settings = harness.settings
    coming_week = harness.services.agenda
    # WHEN every route's work is done: the overview (two pages), a user's page, resyncs started,
    # coalesced, refused and failed, and unknown users
    with dynamodb_calls(harness.client) as calls:
        first = status.overview(limit=1)
        status.overview(limit=1, start=first.next_start)
        status.user(ada)
        coming_week.agenda(ada, Window.days_from(int(time.time()), 7))  # the user page's next seven days
        assert status.resync(ada).outcome == "started"
        assert status.resync(ada).outcome == "coalesced"
        assert failing.resync(unstartable).outcome == "invoke_failed"
        with pytest.raises(ReauthorizationPending):
            status.resync(gone)
        with pytest.raises(UnknownUser):
            status.user("ou_grants_nobody")
    # THEN each call is one the template grants the status function, and every grant is used
    grants = function_grants(
        "StatusFunction",
        {
            "UsersTable": settings.users_table,
            "CalendarsTable": settings.calendars_table,
            "EventListingsTable": settings.event_listings_table,
            "EventsTable": settings.events_table,
        },
    )
    assert calls == grants
