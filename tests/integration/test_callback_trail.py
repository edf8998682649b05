"""The callback's log trail, through the real handler on DynamoDB Local: one ``pings_dispatched`` line per
delivery names the delivery_id, every user it touched and what happened to each (started, coalesced into a
running sync, ignored, invoke failed), so an operator can follow an event to the syncs' logs; no token."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from feishu_mirror.config import Settings
from feishu_mirror.observability import logger
from local.feishu_sim import FeishuSimulator
from tests.integration.callback_handler import (
    UNREACHABLE,
    LambdaRecorder,
    callback_app,
    reply_body,
    signed_delivery,
)
from tests.integration.harness import Harness
from tests.lambda_handlers import FakeContext

pytestmark = pytest.mark.integration


class Logs:
    """The Powertools JSON lines written while the test runs."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    def lines(self, message: str) -> list[dict[str, Any]]:
        found = []
        for raw in self._stream.getvalue().splitlines():
            if raw.startswith("{"):
                line = json.loads(raw)
                if line.get("message") == message:
                    found.append(line)
        return found

    def text(self) -> str:
        return self._stream.getvalue()


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Route Powertools' log handler (bound to the stdout of import time) to a buffer."""
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield Logs(stream)
    finally:
        handler.setStream(previous)


@pytest.fixture
def unreachable_app(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, sim: FeishuSimulator, dynamodb_endpoint: str
) -> Iterator[ModuleType]:
    """The handler with a Lambda API that cannot be reached."""
    with callback_app(
        monkeypatch, settings=settings, sim=sim, dynamodb_endpoint=dynamodb_endpoint, lambda_endpoint=UNREACHABLE
    ) as module:
        yield module


def test_one_line_per_delivery_names_each_user_and_what_became_of_their_ping(
    app: ModuleType, logs: Logs, harness: Harness, sim: FeishuSimulator, recorder: LambdaRecorder
) -> None:
    # GIVEN an idle user, a user whose sync is running (it holds the lease) and a user who never signed in
    idle = harness.onboard("ou_trail_idle")
    busy = harness.onboard("ou_trail_busy")
    now = int(time.time())
    assert harness.schedule.acquire_lease(busy, "running-sync", now, now + 300) is not None
    stranger = "ou_trail_stranger"
    # WHEN Feishu pushes one event naming all three
    delivery = signed_delivery(sim, sim.calendar_changed_payload([idle, busy, stranger], delivery_id="evt-trail"))
    reply = app.handler(delivery, FakeContext())
    # THEN the idle user's sync is started with the delivery_id, the busy user's ping coalesces
    assert reply_body(reply)["started"] == 1
    assert [payload["open_id"] for payload in recorder.payloads()] == [idle]
    # AND one line, under the delivery's id, says which user got what
    (line,) = logs.lines("pings_dispatched")
    assert line["delivery_id"] == "evt-trail"
    assert line["reason"] == "calendar_changed"
    assert line["started_open_ids"] == [idle]
    assert line["coalesced_open_ids"] == [busy]
    assert line["ignored_open_ids"] == [stranger]
    assert line["invoke_failed_open_ids"] == []
    assert "open_ids_not_logged" not in line
    # AND the acknowledgement line of the same delivery carries the same delivery_id
    (acknowledged,) = logs.lines("event_dispatched")
    assert acknowledged["delivery_id"] == "evt-trail"
    # WHEN Feishu redelivers the event THEN it is a duplicate and no second trail line is written
    assert reply_body(app.handler(delivery, FakeContext()))["duplicate"] is True
    assert len(logs.lines("pings_dispatched")) == 1
    # AND none of the users' tokens, nor the app's secrets, are in the logs
    tokens = {token for u in (idle, busy) for token in harness.tokens(u) if token}
    for secret in {*tokens, sim.app_secret, sim.encrypt_key or "", sim.verification_token} - {""}:
        assert secret not in logs.text()


def test_an_event_change_whose_sync_cannot_be_started_is_logged_with_its_calendar(
    unreachable_app: ModuleType, logs: Logs, harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a user, and a Lambda API that cannot be reached
    open_id = harness.onboard("ou_trail_unreachable")
    # WHEN Feishu pushes a change of one calendar's events
    payload = sim.event_changed_payload(open_id, "cal_trail", delivery_id="evt-trail-2")
    reply = unreachable_app.handler(signed_delivery(sim, payload), FakeContext())
    # THEN the delivery is acknowledged (the user stays due for the schedule), and the trail says so
    assert reply_body(reply)["invoke_failed"] == 1
    (line,) = logs.lines("pings_dispatched")
    assert (line["delivery_id"], line["reason"], line["calendar_id"]) == ("evt-trail-2", "event_changed", "cal_trail")
    assert line["invoke_failed_open_ids"] == [open_id]
    assert line["started_open_ids"] == line["coalesced_open_ids"] == line["ignored_open_ids"] == []
