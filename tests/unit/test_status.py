"""Operator status: health derivation (the service), content negotiation and the origin check (the HTTP
edge), HTML escaping (the pages), the lag metric."""

from __future__ import annotations

from typing import Any

import pytest

from feishu_mirror.health import LAG_METRIC, UserHealth, record_push_to_mirror_lag
from feishu_mirror.models import SyncResult
from feishu_mirror.observability import metrics
from feishu_mirror.status import ComingWeek, MirroredCalendar, Overview, StatusRequestInvalid, UserDetail, valid_open_id
from feishu_mirror.status_http import cross_site, overview_href, page_size, wants_json
from feishu_mirror.status_pages import AUTO_REFRESH_SECONDS, render_message, render_overview, render_user

NOW = 1_764_000_000
STALE = 6 * 3600
SECRETS = {
    "access_token": "u-secret-access",
    "refresh_token": "ur-secret-refresh",
    "sync_token": "secret-sync-token",
    "checkpoint": {"kind": "full", "page_token": "secret-page-token", "seen_ids": ["a"], "started_at": NOW},
    "lease_owner": "request-id",
}


def health(**item: Any) -> UserHealth:
    return UserHealth.from_item({"open_id": "ou_a", **item}, now=NOW, stale_after_seconds=STALE)


@pytest.mark.parametrize(
    ("accept", "fmt", "expected"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None, False),  # a browser
        ("*/*", None, False),  # curl
        (None, None, False),
        ("application/json", None, True),
        ("application/json, text/html;q=0.5", None, True),
        ("text/html, application/json;q=0.9", None, False),
        ("APPLICATION/JSON", None, True),
        ("application/json;q=oops", None, False),
        ("text/html", "json", True),
        ("application/json", "html", False),
    ],
)
def test_json_is_served_only_when_preferred(accept: str | None, fmt: str | None, expected: bool) -> None:
    assert wants_json(accept, fmt) is expected


@pytest.mark.parametrize(
    ("item", "state"),
    [
        ({"status": "reauth_required", "consecutive_failures": 3}, "reauth_required"),
        ({"last_success_at": NOW - 10, "consecutive_failures": 2}, "failing"),
        ({"last_success_at": NOW - 10, "held_sweep": {"count": 7, "first_seen_at": NOW - 60}}, "held_deletions"),
        ({}, "never_synced"),
        ({"lease_expires_at": NOW + 100}, "syncing"),
        ({"last_success_at": NOW - STALE - 1}, "stale"),
        ({"last_success_at": NOW - STALE - 1, "lease_expires_at": NOW + 100}, "syncing"),
        ({"last_success_at": NOW - 10, "lease_expires_at": NOW - 1}, "ok"),
    ],
)
def test_each_user_gets_the_worst_state_that_applies(item: dict[str, Any], state: str) -> None:
    assert health(**item).state == state


def test_health_carries_the_recorded_counters_and_never_a_token() -> None:
    # GIVEN a users-table item with tokens, a sync token and a checkpoint beside the health attributes
    item = {
        **SECRETS,
        "name": "Ada",
        "status": "active",
        "last_success_at": NOW - 5,
        "last_attempt_at": NOW - 6,
        "full_resync_count": 2,
        "calendars_mirrored": 4,
        "subscribed_at": NOW - 100,
    }
    # WHEN it becomes a health view
    view = health(**item).as_dict()
    # THEN the counters are there, the listing in progress shows, and no secret value appears anywhere
    assert (view["full_resync_count"], view["calendars_mirrored"], view["subscribed_at"]) == (2, 4, NOW - 100)
    assert (view["last_attempt_at"], view["reauth_required"], view["resuming_listing"]) == (NOW - 6, False, True)
    text = repr(view)
    for secret in ("u-secret-access", "ur-secret-refresh", "secret-sync-token", "secret-page-token", "request-id"):
        assert secret not in text


def test_reauth_required_is_spelled_out() -> None:
    view = health(status="reauth_required", reauth_required_at=NOW - 60, last_error_code=20064)
    assert view.reauth_required
    assert view.as_dict()["reauth_required"] is True


def test_a_missing_scope_and_the_reauth_cause_are_shown() -> None:
    # GIVEN a user asked to authorise again for a scope Feishu named
    view = health(
        status="reauth_required",
        reauth_required_at=NOW - 60,
        last_error_code=99991679,
        reauth_cause="scope_missing",
        missing_scope="calendar:calendar:readonly or calendar:calendar",
    )
    # THEN the health carries both, and the user's page names them
    assert (view.as_dict()["reauth_cause"], view.as_dict()["missing_scope"]) == (
        "scope_missing",
        "calendar:calendar:readonly or calendar:calendar",
    )
    page = render_user(UserDetail(view, (), 0, NOW))
    assert "<dt>Why</dt><dd>scope missing</dd>" in page
    assert "<dt>Missing scope</dt><dd>calendar:calendar:readonly or calendar:calendar</dd>" in page


def test_pages_escape_everything_that_came_from_feishu_or_the_table() -> None:
    # GIVEN a user and a calendar whose names are markup
    user = health(name="<b>Ada</b>", last_error_message="<img src=x onerror=alert(1)>", consecutive_failures=1)
    calendar = MirroredCalendar("cal'1", {"summary": "<script>alert(1)</script>", "color": 3})
    # WHEN both pages are rendered
    detail = render_user(UserDetail(user, (calendar,), tombstones=2, generated_at=NOW))
    overview = render_overview(Overview((user,), None, 50, NOW, {"failing": 1}))
    # THEN no markup from the data survives unescaped
    for page in (detail, overview):
        assert "<script>" not in page
        assert "<img" not in page
        assert "<b>Ada</b>" not in page
        assert "&lt;b&gt;Ada&lt;/b&gt;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    assert "data-calendar-id='cal&#x27;1'" in detail


def test_the_user_page_offers_a_resync_unless_the_user_must_consent_again() -> None:
    active = render_user(UserDetail(health(last_success_at=NOW), (), 0, NOW))
    reauth = render_user(UserDetail(health(status="reauth_required"), (), 0, NOW))
    assert "action='ou_a/resync'" in active
    assert "<form" not in reauth
    assert "sign in again" in reauth


def test_pages_reload_themselves_and_the_user_page_drops_a_resync_answer_when_it_does() -> None:
    # GIVEN the overview and a user's page as shown after a resync answer (/status/ou_a?resync=started)
    overview = render_overview(Overview((health(),), None, 50, NOW))
    detail = render_user(UserDetail(health(), (), 0, NOW), flash="A sync was started.")
    # THEN both reload every AUTO_REFRESH_SECONDS: the overview itself, the user page its plain URL
    assert f"<meta http-equiv='refresh' content='{AUTO_REFRESH_SECONDS}'>" in overview
    assert f"<meta http-equiv='refresh' content='{AUTO_REFRESH_SECONDS}; url=ou_a'>" in detail
    # AND an error page does not
    assert "http-equiv" not in render_message("Unknown user", "No such user.")


def test_the_overview_links_to_the_next_page_relatively() -> None:
    page = render_overview(Overview((health(),), "ou_next", 2, NOW))
    assert "href='status?start=ou_next&amp;limit=2'" in page
    assert "href='status/ou_a'" in page


@pytest.mark.parametrize(
    ("path", "href"),
    [
        ("/status", "status"),
        ("/status/ou_a", "../status"),
        ("/status/ou_a/resync", "../../status"),
        ("/mirror/status/ou_a", "../status"),  # a custom domain's base path
        ("/status/status/resync", "../../status"),  # a user whose open_id is "status"
        ("", "status"),
    ],
)
def test_error_pages_link_back_to_the_overview_relatively(path: str, href: str) -> None:
    # GIVEN an error answered at ``path`` WHEN its page is rendered THEN its link leads to the overview
    assert overview_href(path) == href
    page = render_message("Unknown user", "No such user.", overview=overview_href(path))
    assert f"<a href='{href}'>All users</a>" in page
    assert "href='/status'" not in page


LOCAL = "127.0.0.1:3000"
EXECUTE_API = "abc123.execute-api.us-east-1.amazonaws.com"


@pytest.mark.parametrize(
    "headers",
    [
        # the page's own button under `make run` (Chromium: fetch metadata and the page's origin)
        {"host": LOCAL, "origin": f"http://{LOCAL}", "sec-fetch-site": "same-origin"},
        # the same button behind aws-sigv4-proxy on the operator's machine: Host is rewritten
        {"host": EXECUTE_API, "origin": "http://localhost:8080", "sec-fetch-site": "same-origin"},
        # ... by a browser without fetch metadata, through a proxy that sets X-Forwarded-Host
        {"host": EXECUTE_API, "origin": "http://localhost:8080", "x-forwarded-host": "localhost:8080"},
        {"host": LOCAL, "origin": f"http://{LOCAL}"},  # a browser without fetch metadata, locally
        {"host": EXECUTE_API, "sec-fetch-site": "none"},  # the operator's own request (typed, bookmarked)
        {"host": EXECUTE_API},  # awscurl, curl, make resync: no Origin, no fetch metadata
    ],
)
def test_the_operators_own_requests_are_not_cross_site(headers: dict[str, str]) -> None:
    assert cross_site(headers) is False


@pytest.mark.parametrize(
    "headers",
    [
        {"host": LOCAL, "origin": "https://evil.example", "sec-fetch-site": "cross-site"},
        {"host": LOCAL, "origin": "https://evil.example"},  # an older browser: the Origin gives it away
        # another port of the same machine is the same site, not the same origin
        {"host": LOCAL, "origin": "http://127.0.0.1:3001", "sec-fetch-site": "same-site"},
        {"host": EXECUTE_API, "origin": "http://localhost:9999", "sec-fetch-site": "same-site"},
        # an opaque origin (sandboxed frame, data: page, cross-origin redirect), whatever else is sent
        {"host": LOCAL, "origin": "null"},
        {"host": LOCAL, "origin": "null", "sec-fetch-site": "same-origin"},
        # behind the proxy, without fetch metadata or X-Forwarded-Host, nothing vouches for the Origin
        {"host": EXECUTE_API, "origin": "http://localhost:8080"},
        {"host": EXECUTE_API, "origin": "https://evil.example", "x-forwarded-host": "localhost:8080"},
        {"host": LOCAL, "origin": "http://[::1"},  # malformed
        {"origin": f"http://{LOCAL}"},  # no host to compare with
    ],
)
def test_requests_from_other_sites_pages_are_cross_site(headers: dict[str, str]) -> None:
    assert cross_site(headers) is True


@pytest.mark.parametrize("raw", ["0", "201", "-1", "ten", "1e3"])
def test_page_sizes_outside_the_range_are_refused(raw: str) -> None:
    with pytest.raises(StatusRequestInvalid):
        page_size(raw)


def test_page_size_defaults_and_accepts_the_range() -> None:
    assert (page_size(None), page_size(""), page_size("1"), page_size("200")) == (50, 50, 1, 200)


@pytest.mark.parametrize("open_id", ["", "ou_a/b", "ou a", "x" * 129, "ou_\u00e9", "../etc"])
def test_malformed_open_ids_are_refused(open_id: str) -> None:
    with pytest.raises(StatusRequestInvalid):
        valid_open_id(open_id)


@pytest.fixture
def emitted() -> Any:
    metrics.clear_metrics()
    yield lambda: dict(metrics.metric_set)
    metrics.clear_metrics()


def test_a_sync_that_brought_pushes_into_the_mirror_emits_the_lag_since_the_earliest(emitted: Any) -> None:
    # GIVEN a sync that released the user with every push since NOW in the mirror
    result = SyncResult("ou_a", "synced", pushed_at=NOW)
    # WHEN the lag is recorded 2.5 s later
    lag = record_push_to_mirror_lag(result, now=NOW + 2.5)
    # THEN it is 2.5 s, emitted as a Seconds metric
    assert lag == 2.5
    assert emitted()[LAG_METRIC]["Value"] == [2.5]
    assert emitted()[LAG_METRIC]["Unit"] == "Seconds"


@pytest.mark.parametrize(
    "result",
    [
        SyncResult("ou_a", "synced", upserted=1),  # no push was waiting (a scheduled resync)
        SyncResult("ou_a", "failed", upserted=1, pushed_at=NOW),  # the pushes are not all in yet
        SyncResult("ou_a", "busy", pushed_at=NOW),
    ],
)
def test_no_lag_is_emitted_unless_a_finished_sync_brought_pushes_in(emitted: Any, result: SyncResult) -> None:
    assert record_push_to_mirror_lag(result, now=NOW + 1) is None
    assert LAG_METRIC not in emitted()


def test_the_user_page_shows_the_coming_week_as_local_dates_and_times() -> None:
    # GIVEN the next seven days as the status function builds them from the agenda
    from feishu_mirror.agenda import EventItem, Window, expand  # noqa: PLC0415

    weekly = {
        "calendar_id": "cal_a",
        "event_id": "mtg_0",
        "summary": "<i>1:1</i>",
        "recurrence": "FREQ=WEEKLY",
        "start_time": {"timestamp": "1764036000", "timezone": "Asia/Shanghai"},  # Tue 25 Nov 2025 10:00 +08
        "end_time": {"timestamp": "1764037800", "timezone": "Asia/Shanghai"},
    }
    entries = expand([EventItem.parse(weekly)], Window.days_from(NOW, 7))
    # WHEN the page is rendered with them
    page = render_user(UserDetail(health(), (), 0, NOW), coming_week=ComingWeek(entries=tuple(entries)))
    # THEN the occurrence reads as a local date and time in its zone, escaped, never as epoch seconds
    assert "Tue 2025-11-25 10:00–10:30 Asia/Shanghai" in page
    assert "&lt;i&gt;1:1&lt;/i&gt;" in page
    assert "1764036000" not in page
    assert "↻ recurring" in page  # an occurrence of a series says so
    # AND a user whose first sync is pending is told so
    pending = render_user(UserDetail(health(), (), 0, NOW), coming_week=ComingWeek(note="first sync has not finished"))
    assert "first sync has not finished" in pending
