"""The Feishu client's error handling, against scripted HTTP answers (no network)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from feishu_mirror.errors import (
    AccessTokenRejected,
    AuthorizationCodeRejected,
    DeadlineExceeded,
    FeishuError,
    FeishuUnavailable,
    ReauthorizationRequired,
    RefreshOutcomeUnknown,
    ScopeMissing,
    SyncTokenExpired,
)
from feishu_mirror.feishu import FeishuClient, RetryPolicy

TOKEN = "u-secret-access-token"


def answer(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if body is not None else b"<html>oops</html>"
    response.headers.update({"X-Tt-Logid": "log-1", **(headers or {})})
    return response


def page(
    calendars: list[Any], *, has_more: bool = False, page_token: str = "", sync_token: str = "S1"
) -> dict[str, Any]:
    return {
        "code": 0,
        "msg": "success",
        "data": {"has_more": has_more, "page_token": page_token, "sync_token": sync_token, "calendar_list": calendars},
    }


class ScriptedSession:
    """Answers requests from a script; an Exception in the script is raised instead."""

    def __init__(self, *script: requests.Response | Exception) -> None:
        self.script: Iterator[requests.Response | Exception] = iter(script)
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.calls.append({"method": method, "url": url, **kwargs})
        step = next(self.script)
        if isinstance(step, Exception):
            raise step
        return step


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def client(session: ScriptedSession, clock: Clock | None = None) -> FeishuClient:
    clock = clock or Clock()
    return FeishuClient(
        base_url="http://feishu.test",
        accounts_url="http://accounts.test",
        app_id="cli_app",
        app_secret="app-secret-value",
        session=session,  # type: ignore[arg-type]
        retry=RetryPolicy(max_attempts=3),
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        clock=lambda: 1000.0,
    )


DEADLINE = 10_000.0


def test_a_page_is_parsed_and_malformed_entries_are_skipped() -> None:
    session = ScriptedSession(
        answer(
            body=page(
                [
                    {"calendar_id": "c1", "summary": "One", "color": -1, "is_third_party": False, "role": "owner"},
                    {"calendar_id": "c2", "summary": 7, "color": True, "is_deleted": True},
                    {"summary": "no id"},
                    "not an object",
                ],
                has_more=True,
                page_token="P2",
                sync_token="",
            )
        )
    )
    result = client(session).list_calendars(TOKEN, deadline=DEADLINE, page_size=500, sync_token="S0")
    assert [(c.calendar_id, dict(c.fields), deleted) for c, deleted in result.entries] == [
        ("c1", {"summary": "One", "color": -1, "is_third_party": False, "role": "owner"}, False),
        ("c2", {}, True),
    ]
    assert (result.has_more, result.page_token, result.sync_token, result.log_id, result.skipped_entries) == (
        True,
        "P2",
        "",
        "log-1",
        2,
    )
    call = session.calls[0]
    assert call["params"] == {"page_size": "500", "sync_token": "S0"}
    assert call["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_a_follow_up_page_sends_the_page_token_alone() -> None:
    session = ScriptedSession(answer(body=page([])))
    client(session).list_calendars(TOKEN, deadline=DEADLINE, page_token="P2", sync_token="S0")
    assert session.calls[0]["params"] == {"page_size": "1000", "page_token": "P2"}


def test_429_waits_for_the_reset_header_then_succeeds() -> None:
    clock = Clock()
    session = ScriptedSession(
        answer(429, {"code": 99991400, "msg": "request trigger frequency limit"}, {"x-ogw-ratelimit-reset": "3"}),
        answer(400, {"code": 99991400, "msg": "request trigger frequency limit"}, {"x-ogw-ratelimit-reset": "1"}),
        answer(body=page([])),
    )
    client(session, clock).list_calendars(TOKEN, deadline=DEADLINE)
    assert len(session.calls) == 3
    assert 3 <= clock.slept[0] <= 3.25
    assert 1 <= clock.slept[1] <= 1.25


def test_a_rate_limit_reset_beyond_the_deadline_gives_up_without_sleeping() -> None:
    clock = Clock()
    session = ScriptedSession(answer(429, {"code": 99991400, "msg": "limit"}, {"x-ogw-ratelimit-reset": "60"}))
    with pytest.raises(FeishuUnavailable):
        client(session, clock).list_calendars(TOKEN, deadline=clock.now + 30)
    assert clock.slept == []


@pytest.mark.parametrize(
    "failure",
    [
        answer(500, {"code": 190003, "msg": "internal service error"}),
        answer(502, None),
        answer(200, {"code": 190010, "msg": "current operation rate limited"}),
        requests.ConnectionError("connection reset"),
        requests.Timeout("read timed out"),
    ],
)
def test_transient_failures_back_off_and_retry(failure: requests.Response | Exception) -> None:
    clock = Clock()
    session = ScriptedSession(failure, answer(body=page([])))
    client(session, clock).list_calendars(TOKEN, deadline=DEADLINE)
    assert len(session.calls) == 2
    assert len(clock.slept) == 1
    assert 0 <= clock.slept[0] <= 0.8  # full jitter under base * 2


def test_transient_failures_give_up_after_max_attempts() -> None:
    session = ScriptedSession(*[answer(503, {"code": 1500, "msg": "busy"})] * 3)
    with pytest.raises(FeishuUnavailable) as caught:
        client(session).list_calendars(TOKEN, deadline=DEADLINE)
    assert len(session.calls) == 3
    assert caught.value.code == 1500


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, 190008, SyncTokenExpired),
        (400, 99991677, AccessTokenRejected),
        (200, 99991668, AccessTokenRejected),
        (404, 195100, ReauthorizationRequired),
        (400, 190002, FeishuError),
    ],
)
def test_non_retryable_codes_raise_their_kind_after_one_call(status: int, code: int, kind: type[FeishuError]) -> None:
    session = ScriptedSession(answer(status, {"code": code, "msg": "no"}))
    with pytest.raises(kind) as caught:
        client(session).list_calendars(TOKEN, deadline=DEADLINE)
    assert type(caught.value) is kind
    assert (caught.value.code, caught.value.http_status, caught.value.log_id) == (code, status, "log-1")
    assert len(session.calls) == 1
    assert TOKEN not in str(caught.value)


def test_a_non_json_client_error_is_not_retried() -> None:
    session = ScriptedSession(answer(404, None))
    with pytest.raises(FeishuError, match="HTTP 404"):
        client(session).list_calendars(TOKEN, deadline=DEADLINE)


def test_has_more_without_a_page_token_is_passed_on_for_the_listing_to_decide() -> None:
    # GIVEN a page that says there is more but carries only a sync_token (how Feishu continues an
    # incremental event listing: page tokens come only with anchor_time)
    session = ScriptedSession(answer(body=page([], has_more=True, page_token="", sync_token="S2")))
    # WHEN it is fetched THEN the client reports it as it is; the listing engine decides how to go on
    result = client(session).list_calendars(TOKEN, deadline=DEADLINE, sync_token="S1")
    assert (result.has_more, result.page_token, result.sync_token) == (True, "", "S2")


def test_no_call_starts_without_time_left() -> None:
    clock = Clock()
    with pytest.raises(DeadlineExceeded):
        client(ScriptedSession(), clock).list_calendars(TOKEN, deadline=clock.now + 0.1)


def test_token_grants_accept_a_string_code_and_compute_expiry() -> None:
    body = {
        "code": "0",
        "access_token": "ACCESS-TOKEN-VALUE",
        "expires_in": 7200,
        "refresh_token": "REFRESH-TOKEN-VALUE",
        "refresh_token_expires_in": 604800,
        "scope": "calendar:calendar:readonly offline_access",
    }
    session = ScriptedSession(answer(body=body))
    grant = client(session).exchange_code(
        code="c", redirect_uri="http://x/cb", code_verifier="v" * 43, deadline=DEADLINE
    )
    assert (grant.access_expires_at, grant.refresh_token, grant.refresh_expires_at) == (
        8200,
        "REFRESH-TOKEN-VALUE",
        605800,
    )
    sent = session.calls[0]["json"]
    assert sent["grant_type"] == "authorization_code"
    assert sent["code_verifier"] == "v" * 43
    assert "Authorization" not in session.calls[0]["headers"]
    assert "TOKEN-VALUE" not in repr(grant)


@pytest.mark.parametrize("code", [20003, 20004, 20049, 20065, 20071])
def test_a_bad_authorization_code_is_its_own_kind(code: int) -> None:
    session = ScriptedSession(answer(400, {"code": code, "error": "invalid_grant", "error_description": "bad code"}))
    with pytest.raises(AuthorizationCodeRejected, match="bad code"):
        client(session).exchange_code(code="c", redirect_uri="r", code_verifier="v", deadline=DEADLINE)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, 20026),
        (400, 20037),
        (400, 20064),
        (400, 20073),
        (400, 20074),
        # every other code too: the official clients clear the token on anything but 20050
        (400, 20001),
        (400, 20002),
        (400, 20063),
        (200, 190003),
        (400, 99991400 + 1),
        (400, "not-a-number"),
    ],
)
def test_every_refresh_refusal_but_20050_and_5xx_requires_reauthorization_at_once(status: int, code: object) -> None:
    # GIVEN the token endpoint refusing the refresh token with a code other than 20050, below HTTP 500
    session = ScriptedSession(answer(status, {"code": code, "error": "invalid_grant"}))
    # WHEN the pair is refreshed THEN the user must authorise again, after a single request
    with pytest.raises(ReauthorizationRequired) as caught:
        client(session).refresh_access_token("old-refresh-token", deadline=DEADLINE)
    assert caught.value.cause == "refresh_token_refused"
    assert len(session.calls) == 1


@pytest.mark.parametrize(
    "failure",
    [
        answer(500, {"code": 20050, "error": "server_error"}),
        answer(503, {"code": 20072, "error": "temporarily_unavailable"}),
        answer(200, {"code": 20050, "error": "server_error"}),
        answer(500, {"code": 1500, "msg": "internal error"}),
        answer(503, None),  # a 503 page: the request was not handled (RFC 9110)
        answer(429, {"code": 99991400, "msg": "limit"}, {"x-ogw-ratelimit-reset": "1"}),
        requests.ConnectTimeout("connect timed out"),
        requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "connection refused"))),  # type: ignore[arg-type]
    ],
)
def test_a_refresh_feishu_certainly_did_not_process_is_retried(failure: requests.Response | Exception) -> None:
    # GIVEN a first refresh attempt that certainly never reached the token service's processing
    session = ScriptedSession(failure, answer(body={"code": 0, "access_token": "new", "expires_in": 60}))
    # WHEN the pair is refreshed THEN the same refresh token is sent again and the grant comes back
    grant = client(session).refresh_access_token("rt", deadline=DEADLINE)
    assert (grant.access_token, grant.refresh_token) == ("new", None)
    assert [call["json"]["refresh_token"] for call in session.calls] == ["rt", "rt"]


@pytest.mark.parametrize(
    "failure",
    [
        requests.ReadTimeout("read timed out"),
        requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))),
        requests.ConnectionError("connection closed after the request was sent"),
        requests.exceptions.ChunkedEncodingError("response ended prematurely"),
        answer(502, None),  # a gateway's page: the token service behind it may have answered
        answer(504, None),
        answer(500, None),
        answer(200, None),  # processed, but the answer is unreadable
        answer(200, {"code": 0, "expires_in": 60}),  # processed, but no access token in it
    ],
)
def test_a_refresh_whose_outcome_is_unknown_is_never_sent_again(failure: requests.Response | Exception) -> None:
    # GIVEN a refresh request that may have reached Feishu (which then spent the refresh token), but
    # whose answer was lost or unusable
    session = ScriptedSession(failure, answer(body={"code": 0, "access_token": "new", "expires_in": 60}))
    # WHEN the pair is refreshed THEN the outcome is reported as unknown after that single request
    with pytest.raises(RefreshOutcomeUnknown):
        client(session).refresh_access_token("rt", deadline=DEADLINE)
    assert len(session.calls) == 1


def test_a_refresh_without_a_new_refresh_token_says_so() -> None:
    session = ScriptedSession(answer(body={"code": 0, "access_token": "new", "expires_in": 60, "scope": "s"}))
    grant = client(session).refresh_access_token("rt", deadline=DEADLINE)
    assert (grant.refresh_token, grant.refresh_expires_at) == (None, None)


@pytest.mark.parametrize("code", [99991672, 99991676, 99991679, 230027])
def test_a_missing_scope_names_the_scopes_feishu_lists(code: int) -> None:
    # GIVEN Feishu refusing a call for a missing scope, naming the candidates in permission_violations
    body = {
        "code": code,
        "msg": "permission denied",
        "error": {
            "log_id": "L",
            "permission_violations": [
                {"type": "action_privilege_required", "subject": "calendar:calendar:readonly", "description": "x"},
                {"type": "action_privilege_required", "subject": "calendar:calendar", "description": "y"},
                {"type": "action_privilege_required", "subject": 7},
            ],
        },
    }
    session = ScriptedSession(answer(400, body))
    # WHEN the calendars are listed THEN the user must authorise again, and the scopes are named
    with pytest.raises(ScopeMissing) as caught:
        client(session).list_calendars(TOKEN, deadline=DEADLINE)
    assert isinstance(caught.value, ReauthorizationRequired)
    assert (caught.value.cause, caught.value.scopes) == (
        "scope_missing",
        ("calendar:calendar:readonly", "calendar:calendar"),
    )
    assert caught.value.missing_scope == "calendar:calendar:readonly or calendar:calendar"
    assert len(session.calls) == 1


def test_a_missing_scope_without_violations_is_named_by_its_code() -> None:
    session = ScriptedSession(answer(403, {"code": 99991679, "msg": "Unauthorized"}))
    with pytest.raises(ScopeMissing) as caught:
        client(session).list_events(TOKEN, "cal", deadline=DEADLINE)
    assert caught.value.missing_scope == "not named by Feishu (code 99991679)"


def test_authorize_url_carries_pkce_and_scopes() -> None:
    url = client(ScriptedSession()).authorize_url(
        redirect_uri="http://127.0.0.1:3000/oauth/callback", state="st", code_challenge="ch", scopes=("a", "b")
    )
    assert url.startswith("http://accounts.test/open-apis/authen/v1/authorize?client_id=cli_app&")
    assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A3000%2Foauth%2Fcallback" in url
    assert "scope=a+b" in url
    assert "code_challenge=ch" in url
    assert "code_challenge_method=S256" in url


@pytest.mark.parametrize("data", [{"name": "x"}, {"open_id": ""}, {"open_id": "ou bad"}, {"open_id": "x" * 129}])
def test_user_info_needs_an_open_id(data: dict[str, Any]) -> None:
    # GIVEN an identity without an open_id, or with one no open_id looks like (the rule of every door)
    session = ScriptedSession(answer(body={"code": 0, "data": data}))
    # THEN no user is made of it
    with pytest.raises(FeishuError, match="open_id"):
        client(session).get_user_info(TOKEN, deadline=DEADLINE)


class RecordingGate:
    """A rate gate that records which API each slot was taken for."""

    def __init__(self) -> None:
        self.apis: list[str] = []

    def acquire(self, api: str, deadline: float) -> None:
        self.apis.append(api)


def test_every_call_takes_a_slot_from_its_own_api_budget() -> None:
    # GIVEN a client whose rate gate records the API of each slot
    ok = {"code": 0, "msg": "success", "data": {}}
    session = ScriptedSession(
        answer(body=page([])),
        answer(body={"code": 0, "data": {"items": [], "has_more": False, "sync_token": "E1"}}),
        answer(body=ok),
        answer(body=ok),
        answer(500, {"code": 1500, "msg": "busy"}),
        answer(body={"code": 0, "access_token": "a", "expires_in": 7200}),
        answer(body={"code": 0, "data": {"open_id": "ou_1"}}),
    )
    gate = RecordingGate()
    feishu = FeishuClient(
        base_url="http://feishu.test",
        accounts_url="http://accounts.test",
        app_id="cli_app",
        app_secret="app-secret-value",
        rate_gate=gate,
        session=session,  # type: ignore[arg-type]
        sleep=lambda _seconds: None,
        monotonic=Clock().monotonic,  # DEADLINE is on this clock, not the machine's uptime
    )
    # WHEN it makes one call to each API (the token refresh retried once)
    feishu.list_calendars(TOKEN, deadline=DEADLINE)
    feishu.list_events(TOKEN, "cal_a@group", deadline=DEADLINE)
    feishu.subscribe_calendar_events(TOKEN, "cal_b@group", deadline=DEADLINE)
    feishu.subscribe_calendar_changes(TOKEN, deadline=DEADLINE)
    feishu.refresh_access_token("r-token", deadline=DEADLINE)
    feishu.get_user_info(TOKEN, deadline=DEADLINE)
    # THEN each request took a slot of its API, named by method and path template (a retry too)
    calendars = "/open-apis/calendar/v4/calendars"
    assert gate.apis == [
        f"GET {calendars}",
        f"GET {calendars}/:calendar_id/events",
        f"POST {calendars}/:calendar_id/events/subscription",
        f"POST {calendars}/subscription",
        "POST /open-apis/authen/v2/oauth/token",
        "POST /open-apis/authen/v2/oauth/token",
        "GET /open-apis/authen/v1/user_info",
    ]
    assert [call["method"] for call in session.calls] == ["GET", "GET", "POST", "POST", "POST", "POST", "GET"]
