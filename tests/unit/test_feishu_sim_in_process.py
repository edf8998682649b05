"""The Feishu simulator answering in-process and in virtual time: the real client through its session,
Feishu's answer times and per-API limits on the virtual clock, shared calendars and generated events."""

from __future__ import annotations

from collections import Counter
from typing import Any

import requests

from feishu_mirror.feishu import FeishuClient
from local.feishu_sim import CALENDARS_PATH, FeishuSimulator, drop, late_reply
from local.virtual_time import VirtualTime


class Numbered:
    """A generated block of ``count`` events ``<prefix><n>_0``."""

    def __init__(self, prefix: str, count: int) -> None:
        self.prefix, self.count = prefix, count

    def event_id(self, index: int) -> str:
        return f"{self.prefix}{index:05d}_0"

    def index(self, event_id: str) -> int | None:
        if not (event_id.startswith(self.prefix) and event_id.endswith("_0")):
            return None
        digits = event_id[len(self.prefix) : -2]
        return int(digits) if digits.isdigit() and int(digits) < self.count else None

    def fields(self, index: int) -> dict[str, Any]:
        return {"summary": f"{self.prefix} {index}", "start_time": {"timestamp": str(1_772_413_200 + index * 3600)}}


def _client(sim: FeishuSimulator, clock: VirtualTime | None = None) -> FeishuClient:
    timing: dict[str, Any] = (
        {} if clock is None else {"sleep": clock.sleep, "monotonic": clock.monotonic, "clock": clock.time}
    )
    return FeishuClient(
        base_url="http://feishu.invalid",
        accounts_url="http://feishu.invalid",
        app_id=sim.app_id,
        app_secret=sim.app_secret,
        session=sim.session(),
        **timing,
    )


def _token(sim: FeishuSimulator, open_id: str) -> str:
    return str(sim.issue_user_tokens(open_id)["access_token"])


def test_the_client_lists_through_the_in_process_session_in_virtual_time() -> None:
    # GIVEN a simulator on a virtual clock with Feishu's answer times
    clock = VirtualTime()
    sim = FeishuSimulator(latency=(0.1, 0.3), clock=clock.time, monotonic=clock.monotonic, sleep=clock.sleep)
    sim.add_user("ou_a", "A", primary_calendar_id="cal_primary_a")
    sim.create_calendar("ou_a", calendar_id="cal_team", type="shared", role="reader")
    sim.create_event("ou_a", "cal_team", event_id="evt_1_0", summary="Standup")
    token = _token(sim, "ou_a")
    client = _client(sim, clock)
    seen: dict[str, Any] = {}

    def sync() -> None:
        calendars = client.list_calendars(token, deadline=clock.monotonic() + 60)
        events = client.list_events(token, "cal_team", deadline=clock.monotonic() + 60)
        seen.update(calendars=calendars, events=events, took=clock.now)

    # WHEN the client lists in a simulated thread
    clock.spawn(sync)
    clock.run()
    # THEN the pages are Feishu's, and the two calls took Feishu's time on the virtual clock only
    assert sorted(c.key for c, _ in seen["calendars"].entries) == ["cal_primary_a", "cal_team"]
    assert [(e.key, e.fields["summary"]) for e, _ in seen["events"].entries] == [("evt_1_0", "Standup")]
    assert 0.2 <= seen["took"] <= 0.6
    assert Counter(r.api for r in sim.requests_log) == {
        f"GET {CALENDARS_PATH}": 1,
        f"GET {CALENDARS_PATH}/:calendar_id/events": 1,
    }


def test_each_api_is_limited_on_the_virtual_clock() -> None:
    # GIVEN 60 requests in the same virtual second to one API and 10 to another
    clock = VirtualTime()
    sim = FeishuSimulator(clock=clock.time, monotonic=clock.monotonic, sleep=clock.sleep)
    sim.add_user("ou_a", "A", primary_calendar_id="cal_a")
    token = _token(sim, "ou_a")
    session = sim.session()
    statuses: Counter[tuple[str, int]] = Counter()

    def burst() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(60):
            reply = session.get(f"http://feishu.invalid{CALENDARS_PATH}", headers=headers, timeout=(3, 10))
            statuses["list", reply.status_code] += 1
        for _ in range(10):
            reply = session.post(f"http://feishu.invalid{CALENDARS_PATH}/subscription", headers=headers, json={})
            statuses["subscribe", reply.status_code] += 1
        clock.sleep(1.0)  # a second later the listing API takes requests again
        reply = session.get(f"http://feishu.invalid{CALENDARS_PATH}", headers=headers)
        statuses["later", reply.status_code] += 1
        assert reply.headers["content-type"].startswith("application/json")

    clock.spawn(burst)
    clock.run()
    # THEN 50 per second pass on the listing API, the other API has a budget of its own
    assert statuses == {("list", 200): 50, ("list", 429): 10, ("subscribe", 200): 10, ("later", 200): 1}


def test_a_dropped_connection_and_a_late_answer_fail_as_over_http() -> None:
    clock = VirtualTime()
    sim = FeishuSimulator(clock=clock.time, monotonic=clock.monotonic, sleep=clock.sleep)

    sim.inject(CALENDARS_PATH, drop(), late_reply(30))
    session = sim.session()
    errors: list[type[Exception]] = []

    def calls() -> None:
        for _ in range(2):
            try:
                session.get(f"http://feishu.invalid{CALENDARS_PATH}", timeout=(3, 10))
            except requests.RequestException as exc:
                errors.append(type(exc))

    clock.spawn(calls)
    clock.run()
    assert errors == [requests.ConnectionError, requests.ReadTimeout]


def test_a_shared_calendar_has_one_set_of_events_in_every_subscribers_list() -> None:
    # GIVEN an org-wide calendar shared with two users, one of whom sees free/busy only
    sim = FeishuSimulator()
    for open_id in ("ou_owner", "ou_b", "ou_c"):
        sim.add_user(open_id, open_id)
    sim.create_calendar("ou_owner", calendar_id="cal_org", type="shared", role="owner", summary="All hands")
    sim.create_event("ou_owner", "cal_org", event_id="evt_org_0", summary="Kick-off")
    sim.share_calendar("ou_owner", "cal_org", "ou_b", role="reader")
    sim.share_calendar("ou_owner", "cal_org", "ou_c", role="free_busy_reader")
    client = _client(sim)
    token_b, token_c = _token(sim, "ou_b"), _token(sim, "ou_c")
    first = client.list_events(token_b, "cal_org", deadline=float("inf"))
    # WHEN the owner changes the event
    sim.update_event("ou_owner", "cal_org", "evt_org_0", summary="Kick-off (moved)")
    # THEN the subscriber's increment shows the change; roles are the subscriber's own
    change = client.list_events(token_b, "cal_org", deadline=float("inf"), sync_token=first.sync_token)
    assert [e.fields["summary"] for e, _ in change.entries] == ["Kick-off (moved)"]
    roles = {c.key: c.fields["role"] for c, _ in client.list_calendars(token_c, deadline=float("inf")).entries}
    assert roles["cal_org"] == "free_busy_reader"
    assert sim.event_count("ou_c", "cal_org") == 1


def test_generated_events_are_listed_in_pages_and_only_changes_are_kept() -> None:
    # GIVEN a calendar with 2,500 generated events
    sim = FeishuSimulator()
    sim.add_user("ou_a", "A", primary_calendar_id="cal_a")
    sim.add_generated_events("ou_a", "cal_a", Numbered("gen", 2500))
    client = _client(sim)
    token = _token(sim, "ou_a")
    # WHEN it is listed in full, then one event changes and one is deleted
    pages, page_token = [], None
    while True:
        page = client.list_events(token, "cal_a", deadline=float("inf"), page_size=1000, page_token=page_token)
        pages.append(page)
        if not page.has_more:
            break
        page_token = page.page_token
    sim.update_event("ou_a", "cal_a", "gen00007_0", summary="changed")
    sim.delete_event("ou_a", "cal_a", "gen02499_0")
    change = client.list_events(token, "cal_a", deadline=float("inf"), sync_token=pages[-1].sync_token)
    # THEN three pages held every event once, and the increment holds exactly the two changes
    listed = [e.key for page in pages for e, _ in page.entries]
    assert len(pages) == 3
    assert len(listed) == len(set(listed)) == 2500
    assert [(e.key, e.fields.get("summary"), deleted) for e, deleted in change.entries] == [
        ("gen00007_0", "changed", False),
        ("gen02499_0", "gen 2499", True),  # listed as cancelled: a deletion
    ]
    assert sim.event_count("ou_a", "cal_a") == 2500
    assert len(sim.events("ou_a", "cal_a")) == 2499
