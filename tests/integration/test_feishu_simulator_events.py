"""The simulator's events (日程) API: listing modes, tokens, cancellations, subscription and pushes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest
import requests

from local.feishu_sim import EVENT_CHANGED_EVENT, FeishuSimulator, empty_page

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[FeishuSimulator]:
    with FeishuSimulator(app_id="cli_events") as simulator:
        simulator.add_user("ou_e", "E")
        yield simulator
        assert simulator.internal_errors == []


def token(sim: FeishuSimulator) -> str:
    return str(sim.issue_user_tokens("ou_e")["access_token"])


def list_events(sim: FeishuSimulator, calendar_id: str, **params: Any) -> dict[str, Any]:
    url = f"{sim.url}/open-apis/calendar/v4/calendars/{quote(calendar_id, safe='')}/events"
    reply = requests.get(url, params=params, headers={"Authorization": f"Bearer {token(sim)}"}, timeout=5)
    return dict(reply.json())


def test_a_full_listing_pages_only_with_anchor_time_then_incremental_reports_cancellations(
    sim: FeishuSimulator,
) -> None:
    # GIVEN a shared calendar with 120 events
    cid = sim.create_calendar("ou_e", summary="Team", type="shared")
    ids = [sim.create_event("ou_e", cid, summary=f"e{n}") for n in range(120)]
    # WHEN listed without anchor_time THEN has_more comes back without a page_token (documented quirk)
    bare = list_events(sim, cid, page_size=50)["data"]
    assert (bare["has_more"], bare["page_token"], len(bare["items"])) == (True, "", 50)
    # WHEN listed with anchor_time=0 THEN it pages to the end and the last page carries a sync_token
    seen: list[str] = []
    data = list_events(sim, cid, page_size=50, anchor_time=0)["data"]
    while True:
        seen += [item["event_id"] for item in data["items"]]
        if not data["has_more"]:
            break
        data = list_events(sim, cid, page_size=50, page_token=data["page_token"])["data"]
    assert sorted(seen) == sorted(ids)
    sync_token = data["sync_token"]
    # WHEN events change THEN the incremental listing returns exactly them, deletions as cancelled
    sim.update_event("ou_e", cid, ids[0], summary="moved")
    sim.delete_event("ou_e", cid, ids[1])
    changed = list_events(sim, cid, sync_token=sync_token)["data"]
    by_id = {item["event_id"]: item for item in changed["items"]}
    assert set(by_id) == {ids[0], ids[1]}
    assert by_id[ids[0]]["summary"] == "moved"
    assert by_id[ids[1]]["status"] == "cancelled"
    assert len(sim.events("ou_e", cid)) == 119


def test_event_listing_errors(sim: FeishuSimulator) -> None:
    cid = sim.create_calendar("ou_e", summary="Team")
    google = sim.create_calendar("ou_e", summary="G", type="google", is_third_party=True)
    assert list_events(sim, cid, start_time=1, end_time=2, sync_token="x")["code"] == 190009
    assert list_events(sim, cid, sync_token="never-issued")["code"] == 190008
    assert list_events(sim, google)["code"] == 191004
    assert list_events(sim, "feishu.cn_missing@group.calendar.feishu.cn")["code"] == 191000
    data = list_events(sim, cid, anchor_time=0)["data"]
    sim.expire_sync_tokens("ou_e")
    assert list_events(sim, cid, sync_token=data["sync_token"])["code"] == 190008


def test_subscribed_calendars_push_event_changes(sim: FeishuSimulator) -> None:
    received: list[dict[str, Any]] = []

    class Callback(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"headers": dict(self.headers), "body": json.loads(body)})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Callback)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cid = sim.create_calendar("ou_e", summary="Team")
        url = f"{sim.url}/open-apis/calendar/v4/calendars/{quote(cid, safe='')}/events/subscription"
        reply = requests.post(url, headers={"Authorization": f"Bearer {token(sim)}"}, timeout=5)
        assert reply.json()["code"] == 0
        assert sim.is_subscribed_to_events("ou_e", cid)
        sim.set_callback_url(f"http://127.0.0.1:{server.server_address[1]}/feishu/events")
        sim.create_event("ou_e", cid, summary="pushed")
        assert sim.wait_for_pushes(10)
        assert len(received) == 1
        assert "encrypt" in received[0]["body"]
        assert sim.deliveries[-1].event_type == EVENT_CHANGED_EVENT
    finally:
        server.shutdown()


def full_listing_sync_token(sim: FeishuSimulator, calendar_id: str) -> str:
    """Page a full listing to its end; its sync token."""
    data = list_events(sim, calendar_id, page_size=50, anchor_time=0)["data"]
    while data["has_more"]:
        data = list_events(sim, calendar_id, page_size=50, page_token=data["page_token"])["data"]
    return str(data["sync_token"])


def test_an_incremental_listing_longer_than_a_page_continues_from_each_page_sync_token(sim: FeishuSimulator) -> None:
    # GIVEN a listed calendar whose 120 events then all change
    cid = sim.create_calendar("ou_e", summary="Team", type="shared")
    ids = [sim.create_event("ou_e", cid, summary=f"e{n}") for n in range(120)]
    sync_token = full_listing_sync_token(sim, cid)
    for event_id in ids:
        sim.update_event("ou_e", cid, event_id, summary=f"moved {event_id}")
    # WHEN the changes are listed 50 at a time THEN no page carries a page_token (only anchor_time gets
    # one): each page with more to come carries the sync_token to continue from, the last one the final
    pages = [list_events(sim, cid, page_size=50, sync_token=sync_token)["data"]]
    while pages[-1]["has_more"]:
        assert pages[-1]["page_token"] == ""
        pages.append(list_events(sim, cid, page_size=50, sync_token=pages[-1]["sync_token"])["data"])
    assert [len(p["items"]) for p in pages] == [50, 50, 20]
    assert sorted(item["event_id"] for p in pages for item in p["items"]) == sorted(ids)
    # AND the final token lists nothing until the next change
    assert list_events(sim, cid, sync_token=pages[-1]["sync_token"])["data"]["items"] == []


@pytest.mark.parametrize(("paging", "page_token", "sync_token"), [("page_token", True, False), ("none", False, False)])
def test_the_other_ways_an_incremental_listing_may_go_on(
    sim: FeishuSimulator, paging: Any, page_token: bool, sync_token: bool
) -> None:
    # GIVEN a listed calendar with more changes than a page, and the simulator paging increments otherwise
    cid = sim.create_calendar("ou_e", summary="Team", type="shared")
    ids = [sim.create_event("ou_e", cid, summary=f"e{n}") for n in range(60)]
    token_ = full_listing_sync_token(sim, cid)
    for event_id in ids:
        sim.delete_event("ou_e", cid, event_id)
    sim.incremental_event_paging = paging
    # WHEN the changes are listed THEN the first page goes on by a page token, or by nothing at all
    first = list_events(sim, cid, page_size=50, sync_token=token_)["data"]
    assert (first["has_more"], bool(first["page_token"]), bool(first["sync_token"])) == (True, page_token, sync_token)


def test_an_empty_page_with_has_more_continues_where_the_event_listing_stands(sim: FeishuSimulator) -> None:
    # GIVEN a calendar with 3 events, and an empty page injected into its full listing and its increment
    cid = sim.create_calendar("ou_e", summary="Team", type="shared")
    ids = [sim.create_event("ou_e", cid, summary=f"e{n}") for n in range(3)]
    path = f"/open-apis/calendar/v4/calendars/{cid}/events"
    sim.inject(path, empty_page())
    # WHEN the full listing is asked for THEN the empty page's page_token leads to every event
    empty = list_events(sim, cid, anchor_time=0)["data"]
    assert (empty["items"], empty["has_more"], bool(empty["page_token"])) == ([], True, True)
    rest = list_events(sim, cid, page_token=empty["page_token"])["data"]
    assert sorted(item["event_id"] for item in rest["items"]) == sorted(ids)
    # WHEN an event changes and the increment gets an empty page THEN its sync_token leads to the change
    sim.update_event("ou_e", cid, ids[0], summary="moved")
    sim.inject(path, empty_page())
    empty = list_events(sim, cid, sync_token=rest["sync_token"])["data"]
    assert (empty["items"], empty["has_more"], empty["page_token"]) == ([], True, "")
    after = list_events(sim, cid, sync_token=empty["sync_token"])["data"]
    assert [item["event_id"] for item in after["items"]] == [ids[0]]
