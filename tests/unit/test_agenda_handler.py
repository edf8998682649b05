"""The agenda handler (functions/agenda/app.py) on the sample events of ``events/``, with the read
side over an in-memory index: routes answer JSON, refusals are 4xx with a code, never a 5xx."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from feishu_mirror.agenda import AgendaService
from tests.agenda_index import FEB_2, OPEN_ID, WEEKLY, IndexedSource
from tests.lambda_handlers import ROOT, FakeContext, handler_module

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")


def sample(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((ROOT / "events" / name).read_text())
    return event


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    env = {name: name.lower() for name in ("USERS_TABLE", "CALENDARS_TABLE", "EVENTS_TABLE")}
    with handler_module("agenda", monkeypatch, env) as module:
        monkeypatch.setattr(module, "service", lambda: AgendaService(IndexedSource([WEEKLY])))
        yield module


def call(app: ModuleType, event: dict[str, Any], **query: str | None) -> tuple[int, dict[str, Any]]:
    event = copy.deepcopy(event)
    event["pathParameters"] = dict(event.get("pathParameters") or {})
    if "open_id" in event["pathParameters"]:
        event["pathParameters"]["open_id"] = OPEN_ID
        event["rawPath"] = event["rawPath"].replace("ou_sample_user", OPEN_ID)
        event["requestContext"]["http"]["path"] = event["rawPath"]
    params = {**(event.get("queryStringParameters") or {}), **query}
    event["queryStringParameters"] = {k: v for k, v in params.items() if v is not None}
    reply = app.handler(event, FakeContext("agenda"))
    assert reply["headers"]["Content-Type"] == "application/json"
    return reply["statusCode"], json.loads(reply["body"])


def test_the_sample_requests_are_answered(app: ModuleType) -> None:
    week = {"from": "2026-02-02T00:00:00+08:00", "to": "2026-02-09T00:00:00+08:00"}
    status, body = call(app, sample("agenda-week.json"), **week)
    assert status == 200
    assert [(e["event_id"], e["start"]) for e in body["occurrences"]] == [(f"mtg_{FEB_2}", "2026-02-02T10:00:00+08:00")]
    status, body = call(app, sample("agenda-calendars.json"))
    assert (status, len(body["calendars"])) == (200, 2)
    status, body = call(app, sample("agenda-freebusy.json"), open_ids=f"{OPEN_ID},ou_nobody", **week)
    assert status == 200
    assert [u.get("error") for u in body["users"]] == [None, "unknown_user"]


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ({"from": None}, 400, "invalid_window"),
        ({"to": "2027-12-01T00:00:00Z"}, 400, "window_too_long"),
        ({"tz": "Nowhere/Special"}, 400, "invalid_time_zone"),
    ],
)
def test_refusals_are_4xx_json_with_a_code(
    app: ModuleType, query: dict[str, str | None], status: int, code: str
) -> None:
    answered, body = call(app, sample("agenda-week.json"), **query)
    assert (answered, body["error"]) == (status, code)
    assert body["message"]
