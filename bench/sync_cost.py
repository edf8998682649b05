"""Sync cost for a user with Feishu's maximum of 1,000 calendars: calls, writes and wall time.

Runs the real sync engine against DynamoDB Local and the Feishu simulator over HTTP.
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
CALENDARS = 1000
PAGE_SIZE = 1000
TRANSACTION_ITEMS = 99


def sync_cost() -> list[Entry]:
    """Full listing of 1,000 calendars, increments of k = 1, 10, 100 changes, and a no-change resync."""
    entries: list[Entry] = []
    with (
        DynamoDBLocal(ROOT / ".local" / "dynamodb") as dynamodb,
        FeishuSimulator(app_id="cli_bench") as sim,
        LocalKms() as kms,
    ):
        client = dynamodb.client()
        settings = fresh_tables(client, events=False, page_size=PAGE_SIZE)
        keys = KmsDataKeys(kms.client(), kms.create_key("bench token key"))
        built = services(client, settings, sim=sim, data_keys=keys)
        vault, users, calendars, engine = built.vault, built.tables.tokens, built.tables.calendars, built.sync
        open_id = "ou_bench_1000"
        sim.add_user(open_id, "Bench")
        for n in range(CALENDARS - 1):
            sim.create_calendar(open_id, summary=f"Calendar {n}", color=n)
        body = sim.issue_user_tokens(open_id)
        now = int(time.time())
        grant = TokenGrant(body["access_token"], now + 7200, body["refresh_token"], now + 604800, body["scope"])
        users.save_authorization(UserIdentity(open_id, "Bench"), vault.seal(open_id, grant), now)
        sim.set_subscribed(open_id)
        users.mark_subscribed(open_id, now)

        def run(label: str) -> tuple[int, int, int, float]:
            calls_before = _listing_calls(sim)
            writes_before = calendars.write_requests
            started = time.perf_counter()
            result = engine.sync_user(open_id, owner=label, deadline=time.monotonic() + 120, lease_seconds=150)
            elapsed = time.perf_counter() - started
            assert result.outcome == "synced", result
            return (
                _listing_calls(sim) - calls_before,
                calendars.write_requests - writes_before,
                result.upserted + result.deleted,
                elapsed,
            )

        calls, writes, items, seconds = run("full")
        entries += [
            Entry("sync_full_1000_listing_calls", calls, "calls", target=math.ceil(CALENDARS / PAGE_SIZE), floor=1),
            Entry(
                "sync_full_1000_dynamodb_write_requests",
                writes,
                "requests",
                target=math.ceil(CALENDARS / 25),
                floor=math.ceil(CALENDARS / TRANSACTION_ITEMS),
            ),
            Entry("sync_full_1000_items_written", items, "items", target=CALENDARS, floor=CALENDARS),
            Entry("sync_full_1000_wall_time", seconds * 1000, "ms"),
        ]
        ids = [c["calendar_id"] for c in sim.calendars(open_id) if c["type"] != "primary"]
        for k in (1, 10, 100):
            for cid in ids[:k]:
                sim.update_calendar(open_id, cid, summary=f"changed {k} {cid[-6:]}")
            calls, _, items, seconds = run(f"incr-{k}")
            entries += [
                Entry(f"sync_increment_{k}_listing_calls", calls, "calls", target=1, floor=1),
                Entry(f"sync_increment_{k}_items_written", items, "items", target=k, floor=k),
                Entry(f"sync_increment_{k}_wall_time", seconds * 1000, "ms"),
            ]
        calls, writes, items, seconds = run("quiet")
        entries += [
            Entry("sync_no_change_items_written", items, "items", target=0, floor=0),
            Entry("sync_no_change_wall_time", seconds * 1000, "ms"),
        ]
    return entries


def _listing_calls(sim: FeishuSimulator) -> int:
    return sum(1 for r in sim.requests_log if r.path == "/open-apis/calendar/v4/calendars")
