"""The sync engine against real DynamoDB Local and the Feishu simulator over HTTP."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from feishu_mirror.dynamodb.rate_gate import DynamoRateGate
from feishu_mirror.errors import LeaseLost
from feishu_mirror.models import Calendar, Checkpoint, CollectionId, Fence, SyncResult
from feishu_mirror.observability import metrics
from feishu_mirror.resync import Resync
from local.feishu_sim import FeishuSimulator, delay, feishu_error, http_error, rate_limited
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration


def test_first_sync_is_a_full_listing_that_mirrors_every_field(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN an onboarded user with a primary and two more calendars
    open_id = harness.onboard("ou_first")
    sim.create_calendar(open_id, summary="Team", description="d", color=-11034625, permissions="public", role="writer")
    sim.create_calendar(open_id, summary="Third party", type="google", is_third_party=True, role="reader")
    # WHEN it syncs
    result = harness.sync(open_id)
    # THEN the mirror equals Feishu field by field, the sync token is kept, the user is subscribed
    assert (result.outcome, result.kind, result.upserted, result.deleted) == ("synced", "full", 3, 0)
    harness.assert_mirror_matches(open_id)
    user = harness.user(open_id)
    assert user["sync_token"]
    assert user["calendars_mirrored"] == 3
    assert "checkpoint" not in user
    assert "lease_owner" not in user
    assert user["due_at"] >= int(time.time()) + harness.settings.stale_after_seconds - 5
    assert sim.is_subscribed(open_id)


def test_a_paged_full_listing_checkpoints_and_lands_whole(
    harness: Harness, sim: FeishuSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_id = harness.onboard("ou_paged", extra_calendars=119)
    checkpoints: list[Checkpoint] = []
    original = harness.listings.save_checkpoint

    def recording(fence: Fence, now: int, collection: CollectionId, checkpoint: Checkpoint) -> bool:
        checkpoints.append(checkpoint)
        return original(fence, now, collection, checkpoint)

    monkeypatch.setattr(harness.listings, "save_checkpoint", recording)
    result = harness.sync(open_id, page_size=50)
    assert (result.outcome, result.pages, result.upserted) == ("synced", 3, 120)
    assert [len(cp.seen_ids) for cp in checkpoints] == [50, 100]
    harness.assert_mirror_matches(open_id)


def test_incremental_sync_writes_exactly_what_changed(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN a synced user
    open_id = harness.onboard("ou_incr", extra_calendars=4)
    harness.sync(open_id)
    before = harness.items(open_id)
    ids = [c["calendar_id"] for c in sim.calendars(open_id) if c["type"] != "primary"]
    # WHEN Feishu reports one creation, one update and one deletion
    created = sim.create_calendar(open_id, summary="New")
    sim.update_calendar(open_id, ids[0], summary="Renamed", color=42)
    sim.delete_calendar(open_id, ids[1])
    result = harness.sync(open_id)
    # THEN only those three items are written; the deleted one is a tombstone with a TTL
    assert (result.kind, result.upserted, result.deleted, result.pages) == ("incremental", 2, 1, 1)
    after = harness.items(open_id)
    changed = {cid for cid in after if after[cid] != before.get(cid)}
    assert changed == {created, ids[0], ids[1]}
    tomb = after[ids[1]]
    assert tomb["deleted_at"] > 0
    assert tomb["expires_at"] > tomb["deleted_at"]
    harness.assert_mirror_matches(open_id)
    assert harness.user(open_id)["calendars_mirrored"] == 5


def test_a_resync_without_changes_writes_no_calendar_items(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_quiet", extra_calendars=3)
    harness.sync(open_id)
    before = harness.items(open_id)
    writes = harness.calendars.write_requests
    result = harness.sync(open_id)
    assert (result.outcome, result.kind, result.upserted, result.deleted) == ("synced", "incremental", 0, 0)
    assert harness.calendars.write_requests == writes
    assert harness.items(open_id) == before


def test_expired_sync_token_means_a_full_listing_and_a_sweep(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN a synced user whose sync token then expires while a calendar disappears without a trace
    open_id = harness.onboard("ou_190008", extra_calendars=5)
    harness.sync(open_id)
    gone = next(c["calendar_id"] for c in sim.calendars(open_id) if c["type"] != "primary")
    sim.delete_calendar(open_id, gone)
    sim.expire_sync_tokens(open_id)
    sim.create_calendar(open_id, summary="Arrived meanwhile")
    # WHEN it syncs
    result = harness.sync(open_id)
    # THEN the 190008 led to a full listing whose sweep tombstoned the vanished calendar
    assert (result.outcome, result.kind) == ("synced", "full")
    assert result.deleted == 1
    assert any(r.code == 190008 for r in sim.requests_log)
    harness.assert_mirror_matches(open_id)
    user = harness.user(open_id)
    assert user["full_resync_count"] == 1
    assert user["sync_token"]


def test_a_mass_deletion_is_held_until_a_later_listing_confirms_it(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN a user with 10 calendars, 8 of which vanish while the sync token expires
    open_id = harness.onboard("ou_mass", extra_calendars=9)
    harness.sync(open_id)
    doomed = [c["calendar_id"] for c in sim.calendars(open_id) if c["type"] != "primary"][:8]
    for cid in doomed:
        sim.delete_calendar(open_id, cid)
    sim.expire_sync_tokens(open_id)
    # WHEN it syncs THEN nothing is deleted yet, the hold is recorded and no sync token is trusted
    held = harness.sync(open_id)
    assert (held.outcome, held.deleted, held.held_deletions) == ("synced", 0, 8)
    assert len(harness.live_items(open_id)) == 10
    user = harness.user(open_id)
    assert user["held_sweep"]["count"] == 8
    assert "sync_token" not in user
    assert user["due_at"] <= int(time.time()) + harness.settings.mass_delete_confirm_seconds + 5
    # WHEN a sync runs before the confirmation delay THEN it still holds
    assert harness.sync(open_id).held_deletions == 8
    # WHEN a full listing after the delay still misses them THEN the deletion is applied
    confirmed = harness.sync(open_id, clock_offset=harness.settings.mass_delete_confirm_seconds + 1)
    assert (confirmed.deleted, confirmed.held_deletions) == (8, 0)
    harness.assert_mirror_matches(open_id)
    assert "held_sweep" not in harness.user(open_id)


def test_rate_limits_are_waited_out(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_429", extra_calendars=2)
    sim.inject("/open-apis/calendar/v4/calendars", rate_limited(1))
    started = time.monotonic()
    result = harness.sync(open_id)
    assert result.outcome == "synced"
    assert time.monotonic() - started >= 1
    assert [r.status for r in sim.requests_log if r.path == "/open-apis/calendar/v4/calendars"][:2] == [429, 200]
    harness.assert_mirror_matches(open_id)


def test_server_errors_and_dropped_connections_are_retried(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_5xx", extra_calendars=2)
    sim.inject("/open-apis/calendar/v4/calendars", http_error(500), http_error(503, code=190003))
    assert harness.sync(open_id).outcome == "synced"
    harness.assert_mirror_matches(open_id)


def test_unretryable_errors_are_recorded_with_a_backoff(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_4xx", extra_calendars=1)
    sim.inject("/open-apis/calendar/v4/calendars", feishu_error(190002, http_status=400, msg="invalid parameters"))
    result = harness.sync(open_id)
    assert (result.outcome, result.error_code) == ("failed", 190002)
    user = harness.user(open_id)
    assert (user["last_error_code"], user["consecutive_failures"]) == (190002, 1)
    assert user["due_at"] >= int(time.time()) + 55
    assert "lease_owner" not in user
    # WHEN the next sync succeeds THEN the health is reset
    assert harness.sync(open_id).outcome == "synced"
    user = harness.user(open_id)
    assert user["consecutive_failures"] == 0
    assert "last_error_code" not in user


def test_an_expired_access_token_is_refreshed_once_and_persisted(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_refresh", extra_calendars=1)
    harness.sync(open_id)
    old = harness.user(open_id)
    old_access, old_refresh = harness.tokens(open_id)
    sim.expire_access_tokens(open_id)
    sim.create_calendar(open_id, summary="after expiry")
    assert harness.sync(open_id).outcome == "synced"
    new = harness.user(open_id)
    new_access, new_refresh = harness.tokens(open_id)
    assert new_access != old_access
    assert new_refresh != old_refresh
    assert new_refresh not in sim.used_refresh_tokens()
    assert new["token_version"] == old["token_version"] + 1
    assert sim.refresh_token_reuse_count == 0
    harness.assert_mirror_matches(open_id)


def test_a_token_about_to_expire_is_refreshed_before_use(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_proactive")
    harness.set_user(open_id, access_expires_at=int(time.time()) + 60)
    assert harness.sync(open_id).outcome == "synced"
    assert harness.user(open_id)["access_expires_at"] > int(time.time()) + 3600
    assert not any(r.code == 99991677 for r in sim.requests_log)


def test_a_dead_refresh_token_marks_the_user_for_reauthorization(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_revoked")
    sim.expire_access_tokens(open_id)
    sim.revoke_refresh_tokens(open_id)
    result = harness.sync(open_id)
    assert (result.outcome, result.error_code) == ("reauth_required", 20064)
    user = harness.user(open_id)
    assert user["status"] == "reauth_required"
    assert "due_at" not in user
    assert "refresh_token" not in user
    assert "access_token" not in user
    assert open_id not in harness.schedule.due_users(int(time.time()) + 10**9, 100)


def test_a_user_who_left_the_tenant_needs_reauthorization(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_gone")
    sim.inject("/open-apis/calendar/v4/calendars", feishu_error(195100, http_status=404, msg="user is dismiss"))
    assert harness.sync(open_id).outcome == "reauth_required"


def test_an_interrupted_listing_resumes_from_its_checkpoint(
    harness: Harness, sim: FeishuSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a 120-calendar user whose second page keeps failing
    open_id = harness.onboard("ou_resume", extra_calendars=119)
    first_page_ok = threading.Event()
    original = harness.listings.save_checkpoint

    def checkpoint_then_break(fence: Fence, now: int, collection: CollectionId, checkpoint: Checkpoint) -> bool:
        kept = original(fence, now, collection, checkpoint)
        if not first_page_ok.is_set():
            first_page_ok.set()
            sim.inject("/open-apis/calendar/v4/calendars", *[http_error(500)] * 10)
        return kept

    monkeypatch.setattr(harness.listings, "save_checkpoint", checkpoint_then_break)
    interrupted = harness.sync(open_id, page_size=50)
    assert interrupted.outcome == "failed"
    assert harness.user(open_id)["checkpoint"]["page_token"]
    assert len(harness.live_items(open_id)) == 50
    # AND a calendar the interrupted listing had already passed changes meanwhile
    first_page = sorted(harness.live_items(open_id))[0]
    sim.update_calendar(open_id, first_page, summary="changed after the interruption")
    # WHEN the next sync runs THEN it resumes with page 2 and writes only the rest, then catches the
    # change the old listing could not see with an incremental pass, before it calls itself done
    sim.clear_faults()
    resumed = harness.sync(open_id, page_size=50)
    assert (resumed.outcome, resumed.kind, resumed.passes) == ("synced", "resume", 2)
    assert (resumed.pages, resumed.upserted) == (3, 71)
    harness.assert_mirror_matches(open_id)


def test_a_held_lease_makes_a_second_sync_back_off_without_writing(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_lease", extra_calendars=2)
    now = int(time.time())
    assert harness.schedule.acquire_lease(open_id, "someone-else", now, now + 60) is not None
    assert harness.sync(open_id).outcome == "busy"
    assert harness.items(open_id) == {}
    # WHEN the other holder's lease expires THEN a sync can take over
    harness.set_user(open_id, lease_expires_at=now - 1)
    assert harness.sync(open_id).outcome == "synced"


def test_a_ping_during_a_sync_makes_it_loop_once_more(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN a sync slowed down by Feishu
    open_id = harness.onboard("ou_ping", extra_calendars=1)
    sim.inject("/open-apis/calendar/v4/calendars", delay(1.0))
    results: list[SyncResult] = []
    worker = threading.Thread(target=lambda: results.append(harness.sync(open_id)))
    worker.start()
    time.sleep(0.5)
    # WHEN a change arrives and is pinged while it runs
    sim.create_calendar(open_id, summary="made during the sync")
    ping = harness.pings.dispatch([open_id], "calendar_changed")
    worker.join(10)
    # THEN the ping was coalesced into the running sync, which ran a second pass and caught the change
    assert ping.coalesced == [open_id]
    assert harness.invoked == []
    assert results[0].passes == 2
    harness.assert_mirror_matches(open_id)


def test_duplicate_pings_start_one_sync(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_dupes")
    first = harness.pings.dispatch([open_id, open_id], "calendar_changed")
    second = harness.pings.dispatch([open_id], "calendar_changed")
    assert (first.started, first.coalesced, second.coalesced) == ([open_id], [open_id], [open_id])
    assert harness.invoked == [open_id]
    assert harness.user(open_id)["dirty_seq"] == 3
    # WHEN the started sync runs THEN a later ping may start a new one
    harness.sync(open_id)
    assert harness.pings.dispatch([open_id], "calendar_changed").started == [open_id]


def test_pings_for_unknown_users_are_ignored_without_writes(harness: Harness) -> None:
    outcome = harness.pings.dispatch(["ou_nobody"], "calendar_changed")
    assert outcome.ignored == ["ou_nobody"]
    assert harness.schedule.get("ou_nobody") is None


def test_a_sync_that_lost_its_lease_cannot_write(harness: Harness, sim: FeishuSimulator) -> None:

    open_id = harness.onboard("ou_fenced")
    now = int(time.time())
    harness.schedule.acquire_lease(open_id, "old-owner", now, now + 60)
    harness.set_user(open_id, lease_owner="new-owner")
    with pytest.raises(LeaseLost):
        harness.calendars.apply(
            Fence(open_id, "old-owner"), now, CollectionId(open_id), upserts=[Calendar("c1", {"summary": "x"})]
        )
    assert harness.items(open_id) == {}


def test_the_scheduled_resync_starts_due_users_only(harness: Harness, sim: FeishuSimulator) -> None:

    fresh = harness.onboard("ou_resync_fresh")  # never synced: due now
    synced = harness.onboard("ou_resync_synced")
    harness.sync(synced)  # due in stale_after seconds
    failed = harness.onboard("ou_resync_failed")
    harness.set_user(failed, due_at=int(time.time()) - 1, consecutive_failures=2)
    reauth = harness.onboard("ou_resync_reauth")
    harness.set_user(reauth, status="reauth_required")
    harness.remove_user_attribute(reauth, "due_at")
    outcome = Resync(harness.schedule, harness.invoker, max_users=100).sweep()
    assert sorted(harness.invoked) == sorted([fresh, failed])
    assert (outcome.started, outcome.skipped) == (2, 0)
    # WHEN the resync runs again before the syncs started THEN it does not start them twice
    assert Resync(harness.schedule, harness.invoker, max_users=100).sweep().started == 0
    assert len(harness.invoked) == 2


def test_each_scheduled_resync_counts_the_users_waiting_to_authorise_again(harness: Harness) -> None:
    # GIVEN three users, two of them waiting to authorise again (the due index no longer holds them)
    harness.onboard("ou_count_active")
    for open_id in ("ou_count_reauth_1", "ou_count_reauth_2"):
        harness.onboard(open_id)
        harness.set_user(open_id, status="reauth_required")
        harness.remove_user_attribute(open_id, "due_at")
    metrics.clear_metrics()
    # WHEN the scheduled resync runs
    Resync(harness.schedule, harness.invoker, max_users=100).sweep()
    # THEN it reports the two as the UsersAwaitingReauth gauge
    assert metrics.metric_set["UsersAwaitingReauth"]["Value"] == [2]
    metrics.clear_metrics()
    # AND once one of them has signed in again, the next run reports one
    harness.set_user("ou_count_reauth_1", status="active")
    Resync(harness.schedule, harness.invoker, max_users=100).sweep()
    assert metrics.metric_set["UsersAwaitingReauth"]["Value"] == [1]
    metrics.clear_metrics()


def _observed_slots(gate: DynamoRateGate, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record every slot (API, µs) the gate hands out."""
    slots: list[tuple[str, int]] = []
    lock = threading.Lock()
    reserve = gate._reserve

    def observed(api: str) -> int:
        slot = reserve(api)
        with lock:
            slots.append((api, slot))
        return slot

    monkeypatch.setattr(gate, "_reserve", observed)
    return slots


def test_the_rate_gate_spaces_requests_across_concurrent_callers(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a gate with slots 100 ms apart and no burst, whose reservations we observe
    gate = DynamoRateGate(
        harness.client, harness.settings.rate_limit_table, "gate-test", requests_per_minute=600, burst=0
    )
    slots = _observed_slots(gate, monkeypatch)
    starts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            gate.acquire("GET /api", time.monotonic() + 30)
            with lock:
                starts.append(time.time())

    # WHEN four callers take five slots each at once
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # THEN every slot handed out is at least 100 ms after the one before, and nobody started early
    times = sorted(slot for _, slot in slots)
    assert len(times) == 20
    assert min(b - a for a, b in itertools.pairwise(times)) >= 100_000
    assert min(start - slot / 1e6 for start, slot in zip(sorted(starts), times, strict=True)) >= -0.005


def test_the_rate_gate_budgets_each_api_on_its_own(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a gate with slots 100 ms apart, a burst of 2, and two APIs
    gate = DynamoRateGate(
        harness.client, harness.settings.rate_limit_table, "gate-apis", requests_per_minute=600, burst=2
    )
    slots = _observed_slots(gate, monkeypatch)
    apis = ("GET /calendars/:calendar_id/events", "POST /calendars/:calendar_id/events/subscription")
    # WHEN ten requests to each API arrive one after the other
    started = time.time()
    for _ in range(10):
        for api in apis:
            gate.acquire(api, time.monotonic() + 30)
    elapsed = time.time() - started
    # THEN each API's slots are its own: three at once (the burst), and no n + 3 of them within n times
    # 100 ms, so the twenty requests take as long as ten to one API would, not twenty
    for api in apis:
        times = sorted(slot for name, slot in slots if name == api)
        assert len(times) == 10
        assert times[2] - times[0] < 50_000, times
        for i, j in itertools.combinations(range(10), 2):
            assert times[j] - times[i] >= (j - i - 2) * 100_000, (i, j, times)
    assert 0.6 <= elapsed < 1.2
    # AND each API has its own item in the table
    items = harness.client.scan(TableName=harness.settings.rate_limit_table)["Items"]
    assert {item["bucket"]["S"] for item in items} >= {f"gate-apis|{api}" for api in apis}


def test_the_rate_gate_makes_one_update_per_request_when_busy_or_quiet(harness: Harness) -> None:
    # GIVEN a gate whose DynamoDB updates we count
    gate = DynamoRateGate(harness.client, harness.settings.rate_limit_table, "gate-updates", requests_per_minute=6000)
    updates: list[str] = []

    def count_update(**_: object) -> None:
        updates.append("UpdateItem")

    harness.client.meta.events.register("before-call.dynamodb.UpdateItem", count_update)
    try:
        # WHEN 30 requests come back to back (a busy API), then 5 more, each after the API fell quiet
        for _ in range(30):
            gate.acquire("GET /busy", time.monotonic() + 30)
        busy = len(updates)
        for _ in range(5):
            time.sleep(0.02)
            gate.acquire("GET /busy", time.monotonic() + 30)
    finally:
        harness.client.meta.events.unregister("before-call.dynamodb.UpdateItem", count_update)
    # THEN each took one conditional update, except the first request and the first after the burst
    assert busy <= 30 + 2
    assert len(updates) - busy <= 5 + 1
