"""End to end: calendar changes in Feishu reach consumers as domain events — OAuth onboarding and pushes
through the local HTTP front, the sync under the Lambda emulator writing DynamoDB Local, the table's
stream read by the local event source mapping, the publisher under the emulator, the local EventBridge."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from feishu_mirror.models import CALENDAR_FIELDS
from local.feishu_sim import FeishuSimulator
from local.run import WARM_EVENTS
from local.stack import LocalStack
from tests.e2e.conftest import assert_no_plaintext_token

pytestmark = pytest.mark.e2e

CALENDAR_CHANGES = ("CalendarCreated", "CalendarUpdated", "CalendarDeleted")


@pytest.fixture(scope="module")
def sim() -> Iterator[FeishuSimulator]:
    with FeishuSimulator(app_id="cli_e2e_changes", push_retry_delays=(0.5, 1.0)) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def stack(sim: FeishuSimulator, aws_calls: Path) -> Iterator[LocalStack]:
    with LocalStack(sim.app_environment(), prefix="e2e-changes-", record_calls=aws_calls) as running:
        running.warm(WARM_EVENTS)
        sim.set_callback_url(f"{running.api_url}/feishu/events", auto_push=False)
        yield running


def calendar_changes(stack: LocalStack, open_id: str) -> list[dict[str, Any]]:
    """The calendar change events published for the user, in the order they arrived."""
    return [
        event
        for event in stack.published_changes()
        if event["detail-type"] in CALENDAR_CHANGES and event["detail"]["open_id"] == open_id
    ]


def feishu_fields(calendar: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in calendar.items() if k in CALENDAR_FIELDS}


def onboard(stack: LocalStack, sim: FeishuSimulator, open_id: str, calendars: int) -> None:
    sim.add_user(open_id, f"User {open_id}")
    for n in range(calendars):
        sim.create_calendar(open_id, summary=f"{open_id} calendar {n}", color=n)
    sim.set_consent_user(open_id)
    page = requests.get(f"{stack.api_url}/oauth/start", timeout=30)
    assert page.status_code == 200, page.text
    assert stack.wait_idle(60)


def push(stack: LocalStack, sim: FeishuSimulator, open_id: str) -> None:
    reply = sim.push_calendar_changed([open_id])
    assert reply.status_code == 200, reply.text
    assert stack.wait_idle(60)


def test_onboarding_publishes_one_calendar_created_per_calendar(stack: LocalStack, sim: FeishuSimulator) -> None:
    # GIVEN a user with a primary calendar and two more
    # WHEN they sign in and the first full sync mirrors their list
    onboard(stack, sim, "ou_changes_onboard", calendars=2)
    # THEN consumers got exactly one CalendarCreated per calendar, with Feishu's fields
    truth = {c["calendar_id"]: feishu_fields(c) for c in sim.calendars("ou_changes_onboard")}
    changes = calendar_changes(stack, "ou_changes_onboard")
    assert [e["detail-type"] for e in changes] == ["CalendarCreated"] * len(truth) == ["CalendarCreated"] * 3
    assert {e["detail"]["calendar_id"]: e["detail"]["after"] for e in changes} == truth
    assert all(e["detail"]["before"] is None and e["detail"]["mirrored_at"] > 0 for e in changes)
    assert all(e["source"] == "feishu-calendar-mirror" for e in changes)
    assert stack.failures == []


def test_a_rename_is_one_update_and_a_deletion_one_deletion(stack: LocalStack, sim: FeishuSimulator) -> None:
    onboard(stack, sim, "ou_changes_edit", calendars=2)
    kept, removed = (c for c in sim.calendars("ou_changes_edit") if c["type"] != "primary")
    seen = len(calendar_changes(stack, "ou_changes_edit"))
    # WHEN a calendar is renamed in Feishu and Feishu pushes the change
    sim.update_calendar("ou_changes_edit", kept["calendar_id"], summary="Renamed")
    push(stack, sim, "ou_changes_edit")
    # THEN exactly one CalendarUpdated is published, with the fields before and after
    (updated,) = calendar_changes(stack, "ou_changes_edit")[seen:]
    assert updated["detail-type"] == "CalendarUpdated"
    assert updated["detail"]["calendar_id"] == kept["calendar_id"]
    assert updated["detail"]["before"] == feishu_fields(kept)
    assert updated["detail"]["after"] == {**feishu_fields(kept), "summary": "Renamed"}
    assert updated["detail"]["changed"] == ["summary"]
    # WHEN another calendar is deleted in Feishu and pushed
    sim.delete_calendar("ou_changes_edit", removed["calendar_id"])
    push(stack, sim, "ou_changes_edit")
    # THEN exactly one CalendarDeleted is published for it
    (deleted,) = calendar_changes(stack, "ou_changes_edit")[seen + 1 :]
    assert deleted["detail-type"] == "CalendarDeleted"
    assert deleted["detail"]["calendar_id"] == removed["calendar_id"]
    assert (deleted["detail"]["before"], deleted["detail"]["after"]) == (feishu_fields(removed), None)
    # AND a push that changes nothing publishes nothing
    push(stack, sim, "ou_changes_edit")
    assert len(calendar_changes(stack, "ou_changes_edit")) == seen + 2
    assert stack.failures == []


def test_a_change_eventbridge_refuses_is_published_by_the_retry(stack: LocalStack, sim: FeishuSimulator) -> None:
    # GIVEN a synced user, and EventBridge refusing the next change of their calendars once
    onboard(stack, sim, "ou_changes_retry", calendars=1)
    assert stack.event_bridge is not None
    stack.event_bridge.fail_entries(lambda event: event["detail"]["open_id"] == "ou_changes_retry", times=1)
    (calendar,) = (c for c in sim.calendars("ou_changes_retry") if c["type"] != "primary")
    seen = len(calendar_changes(stack, "ou_changes_retry"))
    # WHEN the calendar changes and Feishu pushes it
    sim.update_calendar("ou_changes_retry", calendar["calendar_id"], description="now with a description")
    push(stack, sim, "ou_changes_retry")
    # THEN the publisher reported the record failed, the mapping retried it, and the change arrived once
    (refused,) = stack.event_bridge.refused()
    (updated,) = calendar_changes(stack, "ou_changes_retry")[seen:]
    assert (updated["detail-type"], updated["detail"]["changed"]) == ("CalendarUpdated", ["description"])
    assert updated["detail"] == refused["detail"]
    assert stack.failures == []


def test_no_table_item_holds_a_token_in_plaintext(stack: LocalStack, sim: FeishuSimulator) -> None:
    # GIVEN everything this module did through the local stack (onboarding, syncs, refreshes, pushes)
    # WHEN every table is scanned THEN no item holds a token Feishu issued, as text or inside binary
    assert assert_no_plaintext_token(stack, sim.issued_user_tokens()) > 0
