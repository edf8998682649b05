"""Event sync cost for a calendar with 5,000 events: listing calls, writes, items and wall time.

Runs the real sync engine (calendar list, then the calendar's events) against DynamoDB Local and the
Feishu simulator over HTTP. A full listing should need ceil(5000 / 1000) calls and ceil(5000 / 99)
transactions; an increment of k changed events ceil(k / 1000) calls and k items; a push without a change
one call and no write; a quiet resync no call at all.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from bench.common import Entry, fresh_tables, services
from feishu_mirror.models import TokenGrant, UserIdentity
from feishu_mirror.token_vault import KmsDataKeys
from local.dynamodb_local import DynamoDBLocal
from local.feishu_sim import FeishuSimulator
from local.kms import LocalKms

ROOT = Path(__file__).resolve().parent.parent
EVENTS = 5000
PAGE_SIZE = 1000
TRANSACTION_ITEMS = 99
LONG_INCREMENT = 2500


def event_cost() -> list[Entry]:
    """Full listing of 5,000 events, increments of k = 1, 10, 100 and 2,500 changed events, a push
    without a change, a quiet resync."""
    entries: list[Entry] = []
    with (
        DynamoDBLocal(ROOT / ".local" / "dynamodb") as dynamodb,
        FeishuSimulator(app_id="cli_bench_events") as sim,
        LocalKms() as kms,
    ):
        client = dynamodb.client()
        settings = fresh_tables(client, page_size=PAGE_SIZE)
        keys = KmsDataKeys(kms.client(), kms.create_key("bench token key"))
        built = services(client, settings, sim=sim, data_keys=keys)
        vault, users, engine = built.vault, built.tables.tokens, built.sync
        events = built.tables.events
        assert events is not None
        open_id = "ou_bench_events"
        sim.add_user(open_id, "Bench")
        (calendar_id,) = (c["calendar_id"] for c in sim.calendars(open_id))
        ids = [sim.create_event(open_id, calendar_id, summary=f"Event {n}") for n in range(EVENTS)]
        body = sim.issue_user_tokens(open_id)
        now = int(time.time())
        grant = TokenGrant(body["access_token"], now + 7200, body["refresh_token"], now + 604800, body["scope"])
        users.save_authorization(UserIdentity(open_id, "Bench"), vault.seal(open_id, grant), now)
        path = f"/open-apis/calendar/v4/calendars/{calendar_id}/events"

        def listing_calls() -> int:
            return sum(1 for r in sim.requests_log if r.method == "GET" and r.path == path)

        def run(label: str, *, pushed: bool) -> tuple[int, int, int, float]:
            if pushed:
                built.tables.schedule.mark_dirty(open_id, int(time.time()), frozenset({calendar_id}))
            calls_before, writes_before = listing_calls(), events.write_requests
            started = time.perf_counter()
            result = engine.sync_user(open_id, owner=label, deadline=time.monotonic() + 240, lease_seconds=300)
            elapsed = time.perf_counter() - started
            assert result.outcome == "synced", result
            return (
                listing_calls() - calls_before,
                events.write_requests - writes_before,
                result.events_upserted + result.events_deleted,
                elapsed,
            )

        calls, writes, items, seconds = run("full", pushed=False)
        entries += [
            Entry(
                "events_full_5000_listing_calls",
                calls,
                "calls",
                target=math.ceil(EVENTS / PAGE_SIZE),
                floor=math.ceil(EVENTS / PAGE_SIZE),
            ),
            Entry(
                "events_full_5000_dynamodb_write_requests",
                writes,
                "requests",
                target=math.ceil(EVENTS / 25),
                floor=math.ceil(EVENTS / TRANSACTION_ITEMS),
            ),
            Entry("events_full_5000_items_written", items, "items", target=EVENTS, floor=EVENTS),
            Entry("events_full_5000_wall_time", seconds * 1000, "ms"),
        ]
        changed = 0
        for k in (1, 10, 100):
            for event_id in ids[changed : changed + k - 1]:
                sim.update_event(open_id, calendar_id, event_id, summary=f"changed {k}")
            sim.delete_event(open_id, calendar_id, ids[changed + k - 1])
            changed += k
            calls, _, items, seconds = run(f"incr-{k}", pushed=True)
            entries += [
                Entry(f"events_increment_{k}_listing_calls", calls, "calls", target=1, floor=1),
                Entry(f"events_increment_{k}_items_written", items, "items", target=k, floor=k),
                Entry(f"events_increment_{k}_wall_time", seconds * 1000, "ms"),
            ]
        calls, writes, items, _ = run("pushed-quiet", pushed=True)
        entries += [
            Entry("events_pushed_no_change_listing_calls", calls, "calls", target=1, floor=1),
            Entry("events_pushed_no_change_write_requests", writes, "requests", target=0, floor=0),
        ]
        calls, _, items, seconds = run("quiet", pushed=False)
        entries += [
            Entry("events_no_change_listing_calls", calls, "calls", target=0, floor=0),
            Entry("events_no_change_items_written", items, "items", target=0, floor=0),
        ]
        # An increment longer than a page: Feishu goes on from each page's sync token (no page tokens
        # without anchor_time), so it still costs ceil(k / page size) calls and writes exactly k items.
        k = LONG_INCREMENT
        for event_id in ids[changed : changed + k]:
            sim.update_event(open_id, calendar_id, event_id, summary="changed in bulk")
        calls, _, items, seconds = run("incr-long", pushed=True)
        entries += [
            Entry(
                f"events_increment_{k}_listing_calls",
                calls,
                "calls",
                target=math.ceil(k / PAGE_SIZE),
                floor=math.ceil(k / PAGE_SIZE),
            ),
            Entry(f"events_increment_{k}_items_written", items, "items", target=k, floor=k),
            Entry(f"events_increment_{k}_wall_time", seconds * 1000, "ms"),
        ]
    return entries
