"""End to end for the read routes: a user onboarded through OAuth, whose events the sync mirrored, read
back through the local API (``/v1/users/{open_id}/calendars``, ``…/agenda``, ``/v1/freebusy``) from the
agenda function under the Lambda emulator; every refusal is a 4xx with a reason, never a 5xx."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from feishu_mirror.composition import GivenClients, build
from feishu_mirror.config import Settings
from feishu_mirror.models import TokenGrant, UserIdentity
from local.feishu_sim import FeishuSimulator
from local.run import WARM_EVENTS
from local.stack import LocalStack
from tests.e2e.conftest import assert_no_plaintext_token

pytestmark = pytest.mark.e2e
USER = "ou_e2e_reader"
SH = ZoneInfo("Asia/Shanghai")
WEEK = {"from": "2026-03-09T00:00:00+08:00", "to": "2026-03-16T00:00:00+08:00"}


def at(day: int, hour: int, minute: int = 0) -> str:
    return str(int(datetime(2026, 3, day, hour, minute, tzinfo=SH).timestamp()))


def times(day: int, hour: int, minutes: int) -> dict[str, Any]:
    end = int(at(day, hour)) + minutes * 60
    return {
        "start_time": {"timestamp": at(day, hour), "timezone": "Asia/Shanghai"},
        "end_time": {"timestamp": str(end), "timezone": "Asia/Shanghai"},
    }


@pytest.fixture(scope="module")
def stack(aws_calls: Path) -> Iterator[tuple[LocalStack, FeishuSimulator]]:
    with (
        FeishuSimulator(app_id="cli_e2e_reader") as sim,
        LocalStack(sim.app_environment(), prefix="e2e-reader-", record_calls=aws_calls) as running,
    ):
        running.warm({"AgendaFunction": WARM_EVENTS["AgendaFunction"]})
        sim.set_callback_url(f"{running.api_url}/feishu/events", auto_push=False)
        sim.add_user(USER, "Ada Reader")
        own = next(c["calendar_id"] for c in sim.calendars(USER))
        team = sim.create_calendar(USER, summary="Team", role="reader")
        sim.create_event(USER, team, summary="Standup", recurrence="RRULE:FREQ=WEEKLY;BYDAY=MO,WE", **times(2, 9, 15))
        sim.create_event(USER, own, summary="Review", location={"name": "3F"}, **times(10, 14, 60))
        sim.create_event(USER, own, summary="Overlap", **times(10, 14, 90))
        sim.create_event(USER, own, summary="Gym", free_busy_status="free", **times(11, 18, 60))
        sim.set_consent_user(USER)
        assert requests.get(f"{running.api_url}/oauth/start", timeout=30).status_code == 200
        assert running.wait_idle(60)
        yield running, sim


def get(stack: LocalStack, path: str, **params: str) -> requests.Response:
    return requests.get(f"{stack.api_url}{path}", params=params, timeout=30)


def test_the_calendars_route_lists_the_live_calendars(stack: tuple[LocalStack, FeishuSimulator]) -> None:
    running, _sim = stack
    reply = get(running, f"/v1/users/{USER}/calendars")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert sorted(c["summary"] for c in body["calendars"]) == ["Ada Reader", "Team"]
    assert all(c["events_mirrored"] for c in body["calendars"])


def test_the_agenda_route_expands_series_and_sorts_by_start(stack: tuple[LocalStack, FeishuSimulator]) -> None:
    running, _sim = stack
    reply = get(running, f"/v1/users/{USER}/agenda", **WEEK)
    assert reply.status_code == 200, reply.text
    found = [(e["summary"], e["start"], e["recurring_event_id"] is not None) for e in reply.json()["occurrences"]]
    assert found == [
        ("Standup", "2026-03-09T09:00:00+08:00", True),
        ("Review", "2026-03-10T14:00:00+08:00", False),
        ("Overlap", "2026-03-10T14:00:00+08:00", False),
        ("Standup", "2026-03-11T09:00:00+08:00", True),
        ("Gym", "2026-03-11T18:00:00+08:00", False),
    ]
    # times in another zone on request
    utc = get(running, f"/v1/users/{USER}/agenda", tz="UTC", **WEEK).json()["occurrences"][0]
    assert utc["start"] == "2026-03-09T01:00:00+00:00"


def test_freebusy_merges_busy_time_and_names_unknown_users(stack: tuple[LocalStack, FeishuSimulator]) -> None:
    running, _sim = stack
    reply = get(running, "/v1/freebusy", open_ids=f"{USER},ou_e2e_nobody", **WEEK)
    assert reply.status_code == 200, reply.text
    ada, nobody = reply.json()["users"]
    assert ada["busy"] == [
        {"start": "2026-03-09T01:00:00Z", "end": "2026-03-09T01:15:00Z"},
        {"start": "2026-03-10T06:00:00Z", "end": "2026-03-10T07:30:00Z"},
        {"start": "2026-03-11T01:00:00Z", "end": "2026-03-11T01:15:00Z"},
    ]
    assert nobody["error"] == "unknown_user"


def test_refusals_are_4xx_with_a_reason(stack: tuple[LocalStack, FeishuSimulator]) -> None:
    running, _sim = stack
    # GIVEN a user who authorised the mirror but whose first sync has not run
    now = int(time.time())
    settings = Settings(users_table=running.template.table_names["UsersTable"])
    users = build(settings, GivenClients(running.client())).tables.tokens
    grant = running.token_vault().seal("ou_e2e_pending", TokenGrant("at", now + 7200, "rt", now + 86400))
    users.save_authorization(UserIdentity("ou_e2e_pending"), grant, now)
    cases = [
        (f"/v1/users/{USER}/agenda", {"from": "monday", "to": "friday"}, 400, "invalid_window"),
        (f"/v1/users/{USER}/agenda", {"from": "2026-03-09T00:00:00Z"}, 400, "invalid_window"),
        (
            f"/v1/users/{USER}/agenda",
            {"from": "2026-01-01T00:00:00Z", "to": "2027-06-01T00:00:00Z"},
            400,
            "window_too_long",
        ),
        (f"/v1/users/{USER}/agenda", {**WEEK, "tz": "Mars/Base"}, 400, "invalid_time_zone"),
        ("/v1/users/ou_e2e_nobody/agenda", WEEK, 404, "unknown_user"),
        ("/v1/users/ou_e2e_nobody/calendars", {}, 404, "unknown_user"),
        ("/v1/users/ou_e2e_pending/agenda", WEEK, 409, "not_synced_yet"),
        ("/v1/users/ou%3Cscript%3E/agenda", WEEK, 400, "invalid_open_id"),
        ("/v1/freebusy", {"open_ids": ",".join(f"ou_{n}" for n in range(51)), **WEEK}, 400, "too_many_users"),
        ("/v1/freebusy", WEEK, 400, "invalid_open_id"),
    ]
    for path, params, status, code in cases:
        reply = get(running, path, **params)
        assert (reply.status_code, reply.json()["error"]) == (status, code), (path, params, reply.text)
        assert "Traceback" not in reply.text


def test_no_table_item_holds_a_token_in_plaintext(stack: tuple[LocalStack, FeishuSimulator]) -> None:
    running, sim = stack
    assert assert_no_plaintext_token(running, sim.issued_user_tokens()) > 0
