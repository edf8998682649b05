"""End to end for events (日程): onboarding mirrors each readable calendar's events, and Feishu's
signed ``calendar.calendar.event.changed_v4`` pushes, answered by the callback function, keep them
current — the template's functions under the Lambda emulator, the simulator, DynamoDB Local."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from feishu_mirror.dynamodb.mirror import calendar_key
from feishu_mirror.dynamodb.values import attribute_values, plain
from feishu_mirror.models import EVENT_FIELDS
from local.feishu_sim import FeishuSimulator
from local.run import WARM_EVENTS
from local.stack import LocalStack
from tests.e2e.conftest import assert_no_plaintext_token

pytestmark = pytest.mark.e2e
USER = "ou_e2e_events"


@pytest.fixture(scope="module")
def sim() -> Iterator[FeishuSimulator]:
    with FeishuSimulator(app_id="cli_e2e_events", push_retry_delays=(0.5, 1.0)) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def stack(sim: FeishuSimulator, aws_calls: Path) -> Iterator[LocalStack]:
    with LocalStack(sim.app_environment(), prefix="e2e-events-", record_calls=aws_calls) as running:
        running.warm(WARM_EVENTS)
        # The simulator pushes every change of a subscribed calendar by itself, as Feishu does.
        sim.set_callback_url(f"{running.api_url}/feishu/events", auto_push=True)
        yield running


def event_items(stack: LocalStack, calendar_id: str) -> list[dict[str, Any]]:
    """Every event item of one of the user's calendars in the mirror (tombstones included)."""
    items = stack.client().query(
        TableName=stack.template.table_names["EventsTable"],
        KeyConditionExpression="calendar_key = :k",
        ExpressionAttributeValues=attribute_values({":k": calendar_key(USER, calendar_id)}),
        ConsistentRead=True,
    )["Items"]
    return [plain(item) for item in items]


def mirror(stack: LocalStack, calendar_id: str) -> dict[str, dict[str, Any]]:
    """Live events of one of the user's calendars in the mirror, Feishu fields only."""
    return {
        i["event_id"]: {k: v for k, v in i.items() if k in EVENT_FIELDS}
        for i in event_items(stack, calendar_id)
        if "deleted_at" not in i
    }


def truth(sim: FeishuSimulator, calendar_id: str) -> dict[str, dict[str, Any]]:
    return {e["event_id"]: {k: v for k, v in e.items() if k in EVENT_FIELDS} for e in sim.events(USER, calendar_id)}


@pytest.fixture(scope="module")
def calendars(stack: LocalStack, sim: FeishuSimulator) -> dict[str, str]:
    """Onboard the user, whose primary and shared calendars hold events, through the real OAuth flow."""
    sim.add_user(USER, "Grace Hopper")
    ids = {"primary": next(c["calendar_id"] for c in sim.calendars(USER))}
    ids["shared"] = sim.create_calendar(USER, summary="Compiler team", role="reader")
    ids["busy"] = sim.create_calendar(USER, summary="Admiral", role="free_busy_reader")
    sim.create_event(USER, ids["primary"], summary="Lecture", location={"name": "Yale"})
    sim.create_event(USER, ids["shared"], summary="Code review", recurrence="FREQ=WEEKLY;BYDAY=MO")
    sim.set_consent_user(USER)
    page = requests.get(f"{stack.api_url}/oauth/start", timeout=30)
    assert page.status_code == 200, page.text
    assert stack.wait_idle(60)
    return ids


def test_onboarding_mirrors_the_events_of_readable_calendars_and_subscribes_to_them(
    stack: LocalStack, sim: FeishuSimulator, calendars: dict[str, str]
) -> None:
    assert mirror(stack, calendars["primary"]) == truth(sim, calendars["primary"])
    assert mirror(stack, calendars["shared"]) == truth(sim, calendars["shared"])
    assert len(mirror(stack, calendars["shared"])) == 1
    assert mirror(stack, calendars["busy"]) == {}
    assert sim.is_subscribed_to_events(USER, calendars["primary"])
    assert sim.is_subscribed_to_events(USER, calendars["shared"])


def test_pushed_event_changes_keep_the_mirror_equal_to_feishu(
    stack: LocalStack, sim: FeishuSimulator, calendars: dict[str, str]
) -> None:
    # GIVEN the mirrored primary calendar
    primary = calendars["primary"]
    (lecture,) = truth(sim, primary)
    # WHEN events are created, moved and deleted in Feishu, which pushes each change
    added = sim.create_event(USER, primary, summary="Office hours")
    sim.update_event(USER, primary, lecture, start_time={"date": "2026-12-09"}, end_time={"date": "2026-12-10"})
    sim.delete_event(USER, primary, added)
    sim.create_event(USER, primary, summary="Navy reunion")
    assert sim.wait_for_pushes(30)
    assert stack.wait_idle(60)
    # THEN every push was acknowledged and the mirror equals Feishu
    answered = [d.status for d in sim.deliveries if d.event_type == "calendar.calendar.event.changed_v4"]
    assert answered
    assert set(answered) == {200}
    assert mirror(stack, primary) == truth(sim, primary)
    assert stack.failures == []


def test_a_deleted_calendar_takes_its_events_with_it(
    stack: LocalStack, sim: FeishuSimulator, calendars: dict[str, str]
) -> None:
    # GIVEN the shared calendar's events in the mirror
    shared = calendars["shared"]
    events = set(truth(sim, shared))
    assert events
    assert set(mirror(stack, shared)) == events
    # WHEN the shared calendar is deleted in Feishu (which pushes the calendar-list change)
    sim.delete_calendar(USER, shared)
    assert sim.wait_for_pushes(30)
    assert stack.wait_idle(60)
    # THEN its events are no longer live, and each one is kept as a tombstone
    assert mirror(stack, shared) == {}
    tombstoned = {i["event_id"]: "deleted_at" in i for i in event_items(stack, shared)}
    assert tombstoned == dict.fromkeys(events, True)


def test_event_changes_reach_consumers_as_calendar_event_domain_events(
    stack: LocalStack, sim: FeishuSimulator, calendars: dict[str, str]
) -> None:
    # GIVEN the mirrored primary calendar and what consumers have seen so far
    primary = calendars["primary"]

    def published() -> list[dict[str, Any]]:
        return [
            e
            for e in stack.published_changes()
            if e["detail-type"].startswith("CalendarEvent") and e["detail"]["calendar_id"] == primary
        ]

    seen = len(published())
    # WHEN an event is created, then renamed, then deleted in Feishu (each change pushed)
    created = sim.create_event(USER, primary, summary="Bug found")
    assert sim.wait_for_pushes(30)
    assert stack.wait_idle(60)
    sim.update_event(USER, primary, created, summary="First actual bug")
    assert sim.wait_for_pushes(30)
    assert stack.wait_idle(60)
    sim.delete_event(USER, primary, created)
    assert sim.wait_for_pushes(30)
    assert stack.wait_idle(60)
    # THEN consumers got exactly Created, Updated and Deleted for it, in order, with before and after
    changes = [e for e in published()[seen:] if e["detail"]["event_id"] == created]
    assert [e["detail-type"] for e in changes] == [
        "CalendarEventCreated",
        "CalendarEventUpdated",
        "CalendarEventDeleted",
    ]
    assert changes[0]["detail"]["after"]["summary"] == "Bug found"
    assert changes[1]["detail"]["changed"] == ["summary"]
    assert changes[1]["detail"]["after"]["summary"] == "First actual bug"
    assert changes[2]["detail"]["after"] is None
    assert changes[2]["detail"]["open_id"] == USER
    assert stack.failures == []


def test_no_table_item_holds_a_token_in_plaintext(stack: LocalStack, sim: FeishuSimulator) -> None:
    # GIVEN everything this module did through the local stack (onboarding, syncs, refreshes, pushes)
    # WHEN every table is scanned THEN no item holds a token Feishu issued, as text or inside binary
    assert assert_no_plaintext_token(stack, sim.issued_user_tokens()) > 0
