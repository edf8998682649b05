"""Property: whatever calendars and events Feishu holds — generated from the official SDK's models, not
ours — a sync through the simulator (real HTTP, real JSON text) into DynamoDB Local mirrors them: every
mirrored field reads back equal to what Feishu sent, or, for what DynamoDB cannot hold, the item is
stored reduced and marked while everything else converges (see ``tests/mirror_oracle.py``).

Example counts are modest for ``make test``; ``FUZZ_EXAMPLES_SCALE`` (``make soak``) multiplies them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as tally
from hypothesis import strategies as st

from feishu_mirror.feishu import NoRateGate
from feishu_mirror.health import UserHealth
from feishu_mirror.models import CALENDAR_FIELDS, EVENT_FIELDS
from local.feishu_sim import FeishuSimulator
from tests import fuzz_report
from tests.feishu_models import DrawSource, FeishuData
from tests.integration.harness import Harness
from tests.mirror_oracle import Oracle

pytestmark = pytest.mark.integration

ROUNDTRIP = settings(
    max_examples=6 * fuzz_report.scale(),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)


@dataclass
class Tenant:
    """One user's Feishu data: events on the primary calendar, and more calendars with their events."""

    odd: float
    primary_events: list[dict[str, Any]]
    calendars: list[tuple[dict[str, Any], list[dict[str, Any]]]]
    changes: list[dict[str, Any]]  # fields for updates in the second round


@st.composite
def tenants(draw: st.DrawFn) -> Tenant:
    odd = draw(st.sampled_from([0.0, 0.25]))
    data = FeishuData(DrawSource(draw), odd=odd, max_depth=3)
    calendars = [(data.calendar(), data.events(draw(st.integers(0, 3)))) for _ in range(draw(st.integers(0, 2)))]
    changes = [data.event("unused_0", 1_767_225_600) for _ in range(2)]
    return Tenant(odd, data.events(draw(st.integers(0, 3))), calendars, changes)


def quick_sync(harness: Harness, open_id: str) -> Any:
    """A sync whose client skips the app-wide rate gate (the simulator still enforces Feishu's limits)."""
    return harness.sync(open_id, app=harness.app(rate_gate=NoRateGate()))


def check_mirror(harness: Harness, oracle: Oracle, open_id: str, tenant: Tenant) -> int:
    """Calendars and the events of every readable calendar are mirrored by the oracle's rules; health
    counts the reduced items; an item marked reduced only when the tenant had odd values."""
    sim = harness.sim
    problems: list[str] = []
    reduced = 0
    live_calendars = harness.live_items(open_id)
    truth = {c["calendar_id"]: c for c in sim.calendars(open_id)}
    assert set(live_calendars) == set(truth)
    for calendar_id, sent in truth.items():
        stored = live_calendars[calendar_id]
        reduced += "mirror_reduced" in stored
        problems += [f"calendar {calendar_id}: {p}" for p in oracle.problems(sent, stored, CALENDAR_FIELDS)]
        if sent["type"] not in ("primary", "shared", "resource") or sent["role"] not in ("owner", "writer", "reader"):
            continue
        events = {e["event_id"]: e for e in sim.events(open_id, calendar_id)}
        live = harness.live_events(open_id, calendar_id)
        assert set(live) == set(events), f"events of {calendar_id}: {sorted(live)} != {sorted(events)}"
        for event_id, event in events.items():
            reduced += "mirror_reduced" in live[event_id]
            problems += [f"event {event_id}: {p}" for p in oracle.problems(event, live[event_id], EVENT_FIELDS)]
    assert not problems, "\n".join(problems)
    item = harness.health.get_health(open_id)
    assert item is not None
    assert UserHealth.from_item(item, now=0, stale_after_seconds=1).items_reduced == reduced
    assert tenant.odd or not reduced, "nothing in this tenant is beyond DynamoDB, yet items were reduced"
    return reduced


@pytest.mark.timeout(1200)  # a failing example is shrunk for up to 5 minutes: let it finish and show the error
@given(tenant=tenants())
@ROUNDTRIP
def test_whatever_feishu_holds_is_mirrored_faithfully_or_reduced_and_marked(
    harness: Harness, sim: FeishuSimulator, tenant: Tenant
) -> None:
    # GIVEN a user whose calendars hold SDK-shaped events (maybe values DynamoDB cannot hold as sent)
    open_id = harness.onboard(f"ou_{uuid.uuid4().hex[:12]}")
    primary = str(sim.calendars(open_id)[0]["calendar_id"])
    placed = [(primary, e) for e in tenant.primary_events]
    for fields, events in tenant.calendars:
        calendar_id = sim.create_calendar(open_id, **fields)
        placed += [(calendar_id, e) for e in events]
    for calendar_id, event in placed:
        sim.create_event(open_id, calendar_id, **event)
    oracle = Oracle(harness.client, harness.settings.events_table, ("calendar_key", "event_id"))
    # WHEN the user syncs
    result = quick_sync(harness, open_id)
    # THEN the sync succeeds and the mirror holds what Feishu sent (or marks what it could not hold)
    assert result.outcome == "synced", result
    reduced = check_mirror(harness, oracle, open_id, tenant)
    tally(f"items stored reduced: {min(reduced, 3)}{'+' if reduced >= 3 else ''}")
    tally(f"events: {len(placed) // 5 * 5}+, exceptions: {sum(1 for _, e in placed if e.get('is_exception'))}")
    # WHEN Feishu pushes changes of every calendar with nothing changed
    harness.pings.dispatch([open_id], reason="calendar_changed")
    for calendar_id in {c for c, _ in placed}:
        harness.pings.dispatch([open_id], reason="event_changed", calendar_id=calendar_id)
    again = quick_sync(harness, open_id)
    # THEN nothing is written again: reduced items compare in their reduced form
    assert (again.outcome, again.upserted, again.events_upserted, again.events_deleted) == ("synced", 0, 0, 0)
    # WHEN events change (new SDK-shaped fields) and recurring masters are deleted, and it is pushed
    for (calendar_id, event), change in zip(placed, tenant.changes, strict=False):
        fields = {k: v for k, v in change.items() if k not in ("event_id", "is_exception", "recurring_event_id")}
        if event.get("is_exception"):
            fields.pop("status", None)  # a cancelled occurrence stays cancelled; others keep their status
            fields["recurrence"] = ""
        sim.update_event(open_id, calendar_id, event["event_id"], **fields)
    for calendar_id, event in placed:
        if event.get("recurrence"):
            sim.delete_event(open_id, calendar_id, event["event_id"])
    for calendar_id in {c for c, _ in placed}:
        harness.pings.dispatch([open_id], reason="event_changed", calendar_id=calendar_id)
    # THEN the increment converges too: changed fields mirrored or marked, the masters' exceptions gone with them
    assert quick_sync(harness, open_id).outcome == "synced"
    check_mirror(harness, oracle, open_id, tenant)
