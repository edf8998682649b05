"""Tests of the Feishu simulator itself, over real HTTP with `requests` (no DynamoDB needed)."""

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from local.feishu_sim import (
    CALENDARS_PATH,
    OAUTH_TOKEN_PATH,
    FeishuSimulator,
    delay,
    drop,
    event_signature,
    feishu_error,
    gateway_timeout,
    http_error,
    late_reply,
    lost_reply,
    scope_missing,
    unrotated_refresh,
)

REDIRECT_URI = "http://127.0.0.1:9/oauth/callback"
SCOPE = "calendar:calendar:readonly offline_access"
TIMEOUT = 10


def decrypt(encrypt_key: str, encrypted_b64: str) -> bytes:
    """Independent Feishu event decryption: sha256 key, iv = first 16 bytes, AES-256-CBC, PKCS7."""
    key = hashlib.sha256(encrypt_key.encode("utf-8")).digest()
    raw = base64.b64decode(encrypted_b64)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(raw[:16])).decryptor()
    padded = decryptor.update(raw[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@pytest.fixture
def sim() -> Iterator[FeishuSimulator]:
    simulator = FeishuSimulator(push_retry_delays=(0.05, 0.05, 0.05, 0.05))
    simulator.add_user("ou_alice", "Alice")
    simulator.set_consent_user("ou_alice")
    with simulator:
        yield simulator
    assert simulator.internal_errors == []


def authorize(sim: FeishuSimulator, challenge: str | None = None, state: str = "st-1") -> str:
    """Drive the consent page; returns the authorization code from the redirect."""
    params = {"client_id": sim.app_id, "redirect_uri": REDIRECT_URI, "scope": SCOPE, "state": state}
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    response = requests.get(
        f"{sim.url}/open-apis/authen/v1/authorize", params=params, allow_redirects=False, timeout=TIMEOUT
    )
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["state"] == [state]
    return query["code"][0]


def exchange(sim: FeishuSimulator, code: str, verifier: str | None) -> requests.Response:
    body = {
        "grant_type": "authorization_code",
        "client_id": sim.app_id,
        "client_secret": sim.app_secret,
        "code": code,
        "redirect_uri": REDIRECT_URI,
    }
    if verifier is not None:
        body["code_verifier"] = verifier
    return requests.post(f"{sim.url}{OAUTH_TOKEN_PATH}", json=body, timeout=TIMEOUT)


def refresh(sim: FeishuSimulator, refresh_token: str) -> requests.Response:
    body = {
        "grant_type": "refresh_token",
        "client_id": sim.app_id,
        "client_secret": sim.app_secret,
        "refresh_token": refresh_token,
    }
    return requests.post(f"{sim.url}{OAUTH_TOKEN_PATH}", json=body, timeout=TIMEOUT)


def list_page(sim: FeishuSimulator, token: str, **params: Any) -> requests.Response:
    return requests.get(
        f"{sim.url}{CALENDARS_PATH}",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
    )


def list_all(sim: FeishuSimulator, token: str, **params: Any) -> tuple[list[dict[str, Any]], str, int]:
    """Page to the end; returns (entries, final sync_token, number of pages)."""
    entries: list[dict[str, Any]] = []
    pages = 0
    while True:
        body = list_page(sim, token, **params).json()
        assert body["code"] == 0, body
        pages += 1
        entries += body["data"]["calendar_list"]
        if not body["data"]["has_more"]:
            return entries, body["data"]["sync_token"], pages
        params = {"page_token": body["data"]["page_token"], "page_size": params.get("page_size", 500)}


def user_token(sim: FeishuSimulator, open_id: str = "ou_alice") -> str:
    return str(sim.issue_user_tokens(open_id)["access_token"])


class _Receiver:
    """A tiny callback endpoint that records requests and answers with queued status codes."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/feishu/events"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    yield server
    server.close()


# --- crypto ------------------------------------------------------------------------------------


def test_official_vector_decrypts_to_hello_world() -> None:
    # GIVEN the official vector from Feishu's docs
    # WHEN the test's decrypt helper decrypts it
    # THEN it reads "hello world" (so the helper below is a trustworthy oracle)
    assert decrypt("test key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=") == b"hello world"


def test_documented_signature_example() -> None:
    # GIVEN the worked signature example of the research note
    body = b'{"encrypt":"P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="}'
    # WHEN the simulator signs it / THEN it gets the same digest
    assert (
        event_signature("1700000000", "8f2c1d7a", "test key", body)
        == "87af8244f2f1e46efd59656bf7036173f8c4c5f4e485a18e0592b3093949d98e"
    )


def test_build_callback_request_round_trips(sim: FeishuSimulator) -> None:
    # GIVEN a payload
    payload = sim.calendar_changed_payload(["ou_alice"])
    # WHEN it is built as an encrypted callback with a fixed timestamp and nonce
    headers, body = sim.build_callback_request(payload, timestamp=1700000000, nonce="n0nce")
    # THEN the body is exactly {"encrypt": ...}, it decrypts to the payload, and the signature matches
    outer = json.loads(body)
    assert list(outer) == ["encrypt"]
    assert sim.encrypt_key is not None
    assert json.loads(decrypt(sim.encrypt_key, outer["encrypt"])) == payload
    expected = hashlib.sha256(b"1700000000n0nce" + sim.encrypt_key.encode() + body).hexdigest()
    assert headers["X-Lark-Signature"] == expected
    assert headers["X-Lark-Request-Timestamp"] == "1700000000"
    assert headers["Content-Type"] == "application/json; charset=utf-8"


def test_plaintext_mode_has_no_signature() -> None:
    # GIVEN a simulator without encrypt key
    simulator = FeishuSimulator(encrypt_key=None)
    # WHEN a callback request is built
    headers, body = simulator.build_callback_request({"a": 1})
    # THEN it is plaintext JSON without signature headers
    assert json.loads(body) == {"a": 1}
    assert not any(name.startswith("X-Lark-") for name in headers)


# --- tokens and OAuth --------------------------------------------------------------------------


def test_tenant_access_token(sim: FeishuSimulator) -> None:
    # GIVEN the app credentials
    url = f"{sim.url}/open-apis/auth/v3/tenant_access_token/internal"
    # WHEN a tenant token is requested with the right and with a wrong secret
    good = requests.post(url, json={"app_id": sim.app_id, "app_secret": sim.app_secret}, timeout=TIMEOUT)
    bad = requests.post(url, json={"app_id": sim.app_id, "app_secret": "nope"}, timeout=TIMEOUT)
    # THEN the first gets a top-level t- token, the second an error
    assert good.status_code == 200
    assert good.json()["code"] == 0
    assert good.json()["tenant_access_token"].startswith("t-")
    assert good.json()["expire"] == 7200
    assert good.headers["X-Tt-Logid"]
    assert bad.status_code == 400
    assert bad.json()["code"] == 10014


def test_oauth_code_flow_with_pkce(sim: FeishuSimulator) -> None:
    # GIVEN Alice authorizes with a PKCE S256 challenge
    verifier, challenge = pkce_pair()
    code = authorize(sim, challenge)
    # WHEN the app redeems the code with the verifier
    response = exchange(sim, code, verifier)
    # THEN it gets a Bearer token pair for Alice's scopes, and user_info says who she is
    body = response.json()
    assert response.status_code == 200, body
    assert body["code"] == 0
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 7200
    assert body["refresh_token_expires_in"] == 604800
    assert body["refresh_token"]
    assert set(body["scope"].split()) == set(SCOPE.split())
    info = requests.get(
        f"{sim.url}/open-apis/authen/v1/user_info",
        headers={"Authorization": f"Bearer {body['access_token']}"},
        timeout=TIMEOUT,
    ).json()
    assert info["code"] == 0
    assert info["data"]["open_id"] == "ou_alice"
    assert info["data"]["tenant_key"] == sim.tenant_key


def test_oauth_wrong_verifier_and_reused_code(sim: FeishuSimulator) -> None:
    # GIVEN a code issued for a PKCE challenge
    verifier, challenge = pkce_pair()
    code = authorize(sim, challenge)
    # WHEN it is redeemed with a wrong verifier, without one, then correctly, then again
    wrong = exchange(sim, code, "x" * 50)
    missing = exchange(sim, code, None)
    right = exchange(sim, code, verifier)
    again = exchange(sim, code, verifier)
    # THEN PKCE failures give 20049, the right one succeeds, the reuse gives 20065
    assert (wrong.status_code, wrong.json()["code"], wrong.json()["error"]) == (400, 20049, "invalid_grant")
    assert missing.json()["code"] == 20049
    assert right.json()["code"] == 0
    assert (again.status_code, again.json()["code"]) == (400, 20065)


def test_oauth_redirect_mismatch_unknown_and_expired_code(sim: FeishuSimulator) -> None:
    # GIVEN a code without PKCE, and a simulator whose codes expire quickly
    code = authorize(sim)
    body = {
        "grant_type": "authorization_code",
        "client_id": sim.app_id,
        "client_secret": sim.app_secret,
        "code": code,
        "redirect_uri": "http://elsewhere/cb",
    }
    # WHEN redeemed with another redirect_uri, an unknown code, a wrong secret, and after expiry
    mismatch = requests.post(f"{sim.url}{OAUTH_TOKEN_PATH}", json=body, timeout=TIMEOUT).json()
    unknown = exchange(sim, "no-such-code", None).json()
    bad_secret = requests.post(
        f"{sim.url}{OAUTH_TOKEN_PATH}", json=body | {"client_secret": "x"}, timeout=TIMEOUT
    ).json()
    sim.auth_code_ttl = 0.0
    time.sleep(0.01)
    expired = exchange(sim, code, None).json()
    # THEN each gets its documented code
    assert mismatch["code"] == 20071
    assert unknown["code"] == 20003
    assert bad_secret["code"] == 20002
    assert expired["code"] == 20004


def test_consent_page_deny_unknown_client_and_nobody_signed_in(sim: FeishuSimulator) -> None:
    # GIVEN the consent page
    url = f"{sim.url}/open-apis/authen/v1/authorize"
    params = {"client_id": sim.app_id, "redirect_uri": REDIRECT_URI, "scope": SCOPE, "state": "s"}
    # WHEN the user denies / the client is unknown / nobody is signed in
    sim.set_consent_user("ou_alice", deny=True)
    denied = requests.get(url, params=params, allow_redirects=False, timeout=TIMEOUT)
    unknown = requests.get(url, params=params | {"client_id": "cli_x"}, allow_redirects=False, timeout=TIMEOUT)
    sim.set_consent_user(None)
    nobody = requests.get(url, params=params, allow_redirects=False, timeout=TIMEOUT)
    # THEN deny redirects with error=access_denied, the others are 400 pages
    assert denied.status_code == 302
    assert parse_qs(urlsplit(denied.headers["Location"]).query) == {"error": ["access_denied"], "state": ["s"]}
    assert unknown.status_code == 400
    assert nobody.status_code == 400


def test_refresh_rotation_reuse_and_grace(sim: FeishuSimulator) -> None:
    # GIVEN a token pair from the code flow
    first = exchange(sim, authorize(sim), None).json()
    # WHEN it is refreshed, then the old refresh token is presented again
    second = refresh(sim, first["refresh_token"])
    reused = refresh(sim, first["refresh_token"])
    # THEN a new pair is issued, the old refresh token gives 20073 and is counted
    assert second.json()["code"] == 0
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert second.json()["access_token"] != first["access_token"]
    assert (reused.status_code, reused.json()["code"]) == (400, 20073)
    assert sim.refresh_token_reuse_count == 1
    assert sim.used_refresh_tokens() == {first["refresh_token"]}
    # AND the old access token still works during the grace period, but not after it
    assert list_page(sim, first["access_token"]).json()["code"] == 0
    sim.refresh_grace_seconds = 0.0
    refresh(sim, second.json()["refresh_token"])
    assert list_page(sim, second.json()["access_token"]).json()["code"] == 99991677


def test_refresh_revoked_unknown_and_expired(sim: FeishuSimulator) -> None:
    # GIVEN two refresh tokens, one of which is later revoked and one minted already expired
    revoked = sim.issue_user_tokens("ou_alice")["refresh_token"]
    sim.revoke_refresh_tokens("ou_alice")
    sim.refresh_token_ttl = 0
    expired = sim.issue_user_tokens("ou_alice")["refresh_token"]
    # WHEN they and an unknown one are presented
    # THEN 20064, 20037 and 20026
    assert refresh(sim, revoked).json()["code"] == 20064
    assert refresh(sim, expired).json()["code"] == 20037
    assert refresh(sim, "nope").json()["code"] == 20026
    assert sim.refresh_token_reuse_count == 0


def test_token_errors_on_api_calls(sim: FeishuSimulator) -> None:
    # GIVEN a valid user token that is later force-expired, and a tenant token
    token = user_token(sim)
    tenant = requests.post(
        f"{sim.url}/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": sim.app_id, "app_secret": sim.app_secret},
        timeout=TIMEOUT,
    ).json()["tenant_access_token"]
    # WHEN calling the calendar list without, with an unknown, with a tenant and an expired token
    missing = requests.get(f"{sim.url}{CALENDARS_PATH}", timeout=TIMEOUT).json()
    unknown = list_page(sim, "u-unknown").json()
    as_tenant = list_page(sim, tenant).json()
    sim.expire_access_tokens("ou_alice")
    expired = list_page(sim, token).json()
    # THEN each carries its code in the body
    assert missing["code"] == 99991661
    assert unknown["code"] == 99991668
    assert as_tenant["code"] == 190007
    assert expired["code"] == 99991677
    kinds = [r.token_kind for r in sim.requests_log if r.path == CALENDARS_PATH]
    assert kinds == [None, "unknown", "tenant", "user"]


# --- calendar listing --------------------------------------------------------------------------


def test_full_listing_pages_through_120_calendars(sim: FeishuSimulator) -> None:
    # GIVEN Alice has her primary calendar and 120 more
    for number in range(120):
        sim.create_calendar("ou_alice", summary=f"cal {number}")
    token = user_token(sim)
    # WHEN the app pages with page_size 50
    first = list_page(sim, token, page_size=50).json()["data"]
    entries, sync_token, pages = list_all(sim, token, page_size=50)
    # THEN 3 pages of 50, 50, 21 arrive; only the last has a sync_token; nothing is missing
    assert first["has_more"] is True
    assert first["page_token"]
    assert first["sync_token"] == ""
    assert len(first["calendar_list"]) == 50
    assert pages == 3
    assert sync_token
    assert len(entries) == 121
    assert [{k: v for k, v in e.items() if k != "is_deleted"} for e in entries] == sim.calendars("ou_alice")
    assert all(e["is_deleted"] is False for e in entries)
    primary = entries[0]
    assert (primary["type"], primary["role"], primary["summary"]) == ("primary", "owner", "Alice")
    assert set(primary) == {
        "calendar_id",
        "summary",
        "description",
        "permissions",
        "color",
        "type",
        "summary_alias",
        "is_deleted",
        "is_third_party",
        "role",
    }


def test_incremental_after_create_update_delete(sim: FeishuSimulator) -> None:
    # GIVEN a completed full listing and three calendars
    keep = sim.create_calendar("ou_alice", summary="keep")
    change = sim.create_calendar("ou_alice", summary="change")
    remove = sim.create_calendar("ou_alice", summary="remove")
    token = user_token(sim)
    _, sync_token, _ = list_all(sim, token)
    # WHEN one is created, one updated, one deleted
    added = sim.create_calendar("ou_alice", summary="new", color=-11034625)
    sim.update_calendar("ou_alice", change, summary="changed", permissions="public")
    sim.delete_calendar("ou_alice", remove)
    entries, next_token, _ = list_all(sim, token, sync_token=sync_token)
    # THEN the incremental listing holds exactly those three, latest state, deletion flagged
    by_id = {e["calendar_id"]: e for e in entries}
    assert set(by_id) == {added, change, remove}
    assert keep not in by_id
    assert by_id[added]["color"] == -11034625
    assert (by_id[change]["summary"], by_id[change]["permissions"]) == ("changed", "public")
    assert by_id[remove]["is_deleted"] is True
    assert by_id[remove]["summary"] == "remove"
    assert next_token
    assert next_token != sync_token
    # AND a following incremental without changes is empty, and the full listing omits the deleted one
    empty = list_page(sim, token, sync_token=next_token).json()["data"]
    assert (empty["calendar_list"], empty["has_more"], bool(empty["sync_token"])) == ([], False, True)
    assert remove not in {e["calendar_id"] for e in list_all(sim, token)[0]}


def test_changes_during_paged_listing_are_not_lost(sim: FeishuSimulator) -> None:
    # GIVEN 120 calendars and a full listing whose first page has been served
    ids = [sim.create_calendar("ou_alice", summary=f"c{n}") for n in range(120)]
    token = user_token(sim)
    first = list_page(sim, token, page_size=50).json()["data"]
    # WHEN calendars change while the rest is paged (one on a page already served, one not yet)
    seen_id = first["calendar_list"][1]["calendar_id"]
    sim.update_calendar("ou_alice", seen_id, summary="edited while paging")
    sim.delete_calendar("ou_alice", ids[-1])
    created = sim.create_calendar("ou_alice", summary="created while paging")
    entries, sync_token, _ = list_all(sim, token, page_token=first["page_token"], page_size=50)
    # THEN the listing is the snapshot from its start, and the next incremental brings all three changes
    assert created not in {e["calendar_id"] for e in entries}
    changes = {e["calendar_id"]: e for e in list_all(sim, token, sync_token=sync_token)[0]}
    assert set(changes) == {seen_id, ids[-1], created}
    assert changes[seen_id]["summary"] == "edited while paging"
    assert changes[ids[-1]]["is_deleted"] is True


def test_incremental_paging_accepts_page_token_with_sync_token(sim: FeishuSimulator) -> None:
    # GIVEN 60 changes since a sync_token
    token = user_token(sim)
    _, sync_token, _ = list_all(sim, token)
    for number in range(60):
        sim.create_calendar("ou_alice", summary=f"n{number}")
    # WHEN the follow-up page is requested with page_token together with the original sync_token
    first = list_page(sim, token, sync_token=sync_token, page_size=50).json()["data"]
    second = list_page(sim, token, sync_token=sync_token, page_token=first["page_token"], page_size=50).json()
    # THEN page_token wins and the second page holds the remaining 10
    assert first["has_more"] is True
    assert second["code"] == 0
    assert len(second["data"]["calendar_list"]) == 10
    assert second["data"]["has_more"] is False


def test_expired_sync_and_page_tokens_give_190008(sim: FeishuSimulator) -> None:
    # GIVEN a sync_token and a page_token
    for number in range(60):
        sim.create_calendar("ou_alice", summary=f"c{number}")
    token = user_token(sim)
    _, sync_token, _ = list_all(sim, token)
    page_token = list_page(sim, token, page_size=50).json()["data"]["page_token"]
    assert list_page(sim, token, sync_token=sync_token).json()["code"] == 0
    # WHEN they are expired
    sim.expire_sync_tokens("ou_alice")
    by_sync = list_page(sim, token, sync_token=sync_token)
    by_page = list_page(sim, token, page_token=page_token)
    # THEN both give HTTP 400 / 190008, and a fresh full listing works again
    assert (by_sync.status_code, by_sync.json()["code"]) == (400, 190008)
    assert by_page.json() == {"code": 190008, "msg": "page_token or sync_token expired"}
    assert list_page(sim, token).json()["code"] == 0


def test_page_size_out_of_range_gives_99992402(sim: FeishuSimulator) -> None:
    # GIVEN a user token
    token = user_token(sim)
    # WHEN page_size is 10, 1001, or garbage
    # THEN HTTP 400 / 99992402; 50 and 1000 are fine
    for bad in (10, 1001, "x"):
        response = list_page(sim, token, page_size=bad)
        assert (response.status_code, response.json()["code"]) == (400, 99992402)
    assert list_page(sim, token, page_size=50).json()["code"] == 0
    assert list_page(sim, token, page_size=1000).json()["code"] == 0


def test_subscription_marks_user_subscribed(sim: FeishuSimulator) -> None:
    # GIVEN an unsubscribed user
    token = user_token(sim)
    assert not sim.is_subscribed("ou_alice")
    headers = {"Authorization": f"Bearer {token}"}
    # WHEN the app subscribes, then unsubscribes
    subscribed = requests.post(f"{sim.url}{CALENDARS_PATH}/subscription", headers=headers, timeout=TIMEOUT)
    state_after_subscribe = sim.is_subscribed("ou_alice")
    requests.post(f"{sim.url}{CALENDARS_PATH}/unsubscription", headers=headers, timeout=TIMEOUT)
    # THEN the flag follows
    assert subscribed.json() == {"code": 0, "msg": "success", "data": {}}
    assert state_after_subscribe is True
    assert sim.is_subscribed("ou_alice") is False


# --- rate limit and faults ---------------------------------------------------------------------


def test_rate_limit_rejects_with_reset_header() -> None:
    # GIVEN a simulator allowing 3 requests per second
    with FeishuSimulator(rate_per_second=3) as simulator:
        simulator.add_user("ou_alice", "Alice")
        token = user_token(simulator)
        # WHEN 5 requests arrive at once
        responses = [list_page(simulator, token) for _ in range(5)]
        # THEN the last two are 429 / 99991400 with the rate-limit headers
        assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
        rejected = responses[3]
        assert rejected.json() == {"code": 99991400, "msg": "request trigger frequency limit"}
        assert rejected.headers["x-ogw-ratelimit-limit"] == "3"
        assert int(rejected.headers["x-ogw-ratelimit-reset"]) >= 1
        # AND rejected requests do not count: after the reset a request passes again
        time.sleep(float(rejected.headers["x-ogw-ratelimit-reset"]))
        assert list_page(simulator, token).status_code == 200
        assert simulator.peak_rates()[0] >= 5
        assert sum(r.fault == "rate_limit" for r in simulator.requests_log) == 2


def test_rate_limits_apply_to_each_api_on_its_own() -> None:
    # GIVEN a simulator allowing 3 requests per second to each API, and a user with a calendar
    with FeishuSimulator(rate_per_second=3) as simulator:
        simulator.add_user("ou_alice", "Alice")
        calendar_id = simulator.calendars("ou_alice")[0]["calendar_id"]
        token = user_token(simulator)
        headers = {"Authorization": f"Bearer {token}"}
        events_url = f"{simulator.url}{CALENDARS_PATH}/{calendar_id}/events"

        def subscribe() -> requests.Response:
            return requests.post(f"{events_url}/subscription", headers=headers, json={}, timeout=TIMEOUT)

        # WHEN three calendar listings, three event subscriptions and a fourth listing arrive at once
        listings = [list_page(simulator, token) for _ in range(3)]
        subscriptions = [subscribe() for _ in range(3)]
        fourth = list_page(simulator, token)
        # THEN only the fourth request to the same API is refused: the other API has a budget of its own
        assert [r.status_code for r in listings + subscriptions] == [200] * 6
        assert fourth.status_code == 429
        # AND the peaks are reported per API (the event API under its path template)
        peaks = simulator.peak_rates_by_api()
        assert peaks[f"GET {CALENDARS_PATH}"] == (4, 4)
        assert peaks[f"POST {CALENDARS_PATH}/:calendar_id/events/subscription"] == (3, 3)
        assert simulator.peak_rates() == (4, 4)
        assert {r.api for r in simulator.requests_log} >= set(peaks)


def test_latency_delays_each_answer() -> None:
    # GIVEN a simulator whose answers take 200-250 ms, like Feishu's from far away
    with FeishuSimulator(latency=(0.2, 0.25)) as simulator:
        simulator.add_user("ou_alice", "Alice")
        token = user_token(simulator)
        # WHEN a calendar listing is requested
        started = time.monotonic()
        response = list_page(simulator, token)
        # THEN the answer comes after the delay
        assert response.status_code == 200
        assert 0.2 <= time.monotonic() - started < 1.0


def test_injected_faults_are_consumed_in_order(sim: FeishuSimulator) -> None:
    # GIVEN four faults queued on the calendar list path
    token = user_token(sim)
    sim.inject(
        CALENDARS_PATH,
        http_error(500),
        drop(),
        delay(0.3),
        feishu_error(190003, msg="internal service error"),
    )
    # WHEN five requests are made
    server_error = list_page(sim, token)
    with pytest.raises(requests.ConnectionError):
        list_page(sim, token)
    started = time.monotonic()
    delayed = list_page(sim, token)
    elapsed = time.monotonic() - started
    business = list_page(sim, token)
    normal = list_page(sim, token)
    # THEN each fault shows once, in order, then normal service resumes
    assert server_error.status_code == 500
    assert elapsed >= 0.3
    assert delayed.json()["code"] == 0
    assert (business.status_code, business.json()["code"]) == (500, 190003)
    assert normal.json()["code"] == 0
    assert [r.fault for r in sim.requests_log if r.path == CALENDARS_PATH] == [
        "http_error",
        "drop",
        "delay",
        "feishu_error",
        None,
    ]


def test_feishu_error_on_oauth_path_is_oauth_shaped(sim: FeishuSimulator) -> None:
    # GIVEN a transient OAuth server error queued
    sim.inject(OAUTH_TOKEN_PATH, feishu_error(20050))
    # WHEN a refresh is attempted
    response = refresh(sim, sim.issue_user_tokens("ou_alice")["refresh_token"])
    # THEN it is HTTP 500 with the OAuth error body, and the token was not consumed
    assert response.status_code == 500
    assert response.json()["code"] == 20050
    assert response.json()["error"] == "server_error"
    assert sim.used_refresh_tokens() == frozenset()


def test_an_injected_refresh_refusal_sticks_to_the_token(sim: FeishuSimulator) -> None:
    # GIVEN a refresh refused with 20063, and one answered 20050
    refused, retryable = (sim.issue_user_tokens("ou_alice")["refresh_token"] for _ in range(2))
    sim.inject(OAUTH_TOKEN_PATH, feishu_error(20063), feishu_error(20050))
    assert refresh(sim, refused).json()["code"] == 20063
    assert refresh(sim, retryable).json()["code"] == 20050
    # WHEN each is presented again THEN the refused token is refused the same way; the other works
    assert refresh(sim, refused).json()["code"] == 20063
    assert refresh(sim, retryable).json()["code"] == 0


def test_a_lost_refresh_reply_still_spends_the_refresh_token(sim: FeishuSimulator) -> None:
    # GIVEN refresh tokens, and each way a refresh's answer can be lost after Feishu processed it
    tokens = [sim.issue_user_tokens("ou_alice")["refresh_token"] for _ in range(3)]
    sim.inject(OAUTH_TOKEN_PATH, lost_reply(), late_reply(0.5), gateway_timeout())
    # WHEN each is refreshed: the connection closes unanswered, the answer comes after the client gave up,
    # a gateway answers 504 instead
    with pytest.raises(requests.ConnectionError):
        refresh(sim, tokens[0])
    with pytest.raises(requests.ReadTimeout):
        requests.post(
            f"{sim.url}{OAUTH_TOKEN_PATH}",
            json={
                "grant_type": "refresh_token",
                "client_id": sim.app_id,
                "client_secret": sim.app_secret,
                "refresh_token": tokens[1],
            },
            timeout=0.2,
        )
    assert refresh(sim, tokens[2]).status_code == 504
    # THEN every one of them was spent all the same: presenting it again is a reuse (20073)
    time.sleep(0.4)  # the late answer is processed at once, delivered after 0.5 s
    assert sim.used_refresh_tokens() == frozenset(tokens)
    assert refresh(sim, tokens[0]).json()["code"] == 20073
    assert sim.refresh_token_reuse_count == 1


def test_an_unrotated_refresh_keeps_the_refresh_token_valid(sim: FeishuSimulator) -> None:
    # GIVEN a refresh answered without a new refresh token
    first = sim.issue_user_tokens("ou_alice")
    sim.inject(OAUTH_TOKEN_PATH, unrotated_refresh())
    answer = refresh(sim, first["refresh_token"]).json()
    # THEN it carries a new access token only, and the same refresh token works again, once
    assert (answer["code"], "refresh_token" in answer) == (0, False)
    assert list_page(sim, answer["access_token"]).json()["code"] == 0
    again = refresh(sim, first["refresh_token"]).json()
    assert again["code"] == 0
    assert sim.refresh_token_reuse_count == 0
    assert sim.grant_of(again["refresh_token"]) == sim.grant_of(first["refresh_token"])


def test_tokens_descend_from_their_consent_and_a_new_consent_may_revoke_the_old(sim: FeishuSimulator) -> None:
    # GIVEN a consent, a refresh of it, and a second consent that revokes the first one's refresh tokens
    first = sim.issue_user_tokens("ou_alice")
    refreshed = refresh(sim, first["refresh_token"]).json()
    second = sim.issue_user_tokens("ou_alice", revoke_previous=True)
    # THEN the refreshed pair belongs to the first consent, the latest consent is the second
    assert sim.grant_of(refreshed["refresh_token"]) == sim.grant_of(first["access_token"])
    assert sim.latest_grant("ou_alice") == sim.grant_of(second["refresh_token"]) != sim.grant_of(first["access_token"])
    # AND the first consent's refresh token no longer works
    assert refresh(sim, refreshed["refresh_token"]).json()["code"] == 20064


def test_a_token_without_a_calendar_scope_is_refused_with_the_scopes_named(sim: FeishuSimulator) -> None:
    # GIVEN a user who consented without any calendar scope, and one whose calendar scope was withdrawn
    narrow = sim.issue_user_tokens("ou_alice", scope="offline_access")["access_token"]
    sim.add_user("ou_bob", "Bob")
    bob = sim.issue_user_tokens("ou_bob")
    sim.withdraw_scope("ou_bob", "calendar:calendar:readonly")
    for token in (narrow, bob["access_token"], refresh(sim, bob["refresh_token"]).json()["access_token"]):
        # WHEN their calendars are listed THEN Feishu answers 99991679 and names the scopes, any of which
        # would do, in error.permission_violations
        body = list_page(sim, token).json()
        assert body["code"] == 99991679
        subjects = [v["subject"] for v in body["error"]["permission_violations"]]
        assert "calendar:calendar:readonly" in subjects
    # AND an injected missing-scope answer has the same shape
    sim.inject(CALENDARS_PATH, scope_missing(99991672, ("calendar:calendar",)))
    injected = list_page(sim, user_token(sim)).json()
    assert (injected["code"], injected["error"]["permission_violations"][0]["subject"]) == (
        99991672,
        "calendar:calendar",
    )


def test_peak_rates(sim: FeishuSimulator) -> None:
    # GIVEN a quiet simulator
    assert sim.peak_rates() == (0, 0)
    token = user_token(sim)
    # WHEN 7 requests are made in a burst
    for _ in range(7):
        list_page(sim, token)
    # THEN the peak in both windows is 7
    assert sim.peak_rates() == (7, 7)


# --- pushes ------------------------------------------------------------------------------------


def test_push_calendar_changed_is_signed_and_encrypted(sim: FeishuSimulator, receiver: _Receiver) -> None:
    # GIVEN a callback endpoint
    sim.set_callback_url(receiver.url)
    # WHEN an event is pushed for Alice
    response = sim.push_calendar_changed(["ou_alice"], delivery_id="evt-1")
    # THEN the receiver got a signature that verifies over the raw body and a decryptable payload
    assert response.status_code == 200
    headers, body = receiver.requests[0]
    assert sim.encrypt_key is not None
    signed = headers["X-Lark-Request-Timestamp"] + headers["X-Lark-Request-Nonce"] + sim.encrypt_key
    assert hashlib.sha256(signed.encode() + body).hexdigest() == headers["X-Lark-Signature"]
    assert abs(int(headers["X-Lark-Request-Timestamp"]) - time.time()) < 5
    payload = json.loads(decrypt(sim.encrypt_key, json.loads(body)["encrypt"]))
    assert payload["schema"] == "2.0"
    assert payload["header"]["event_id"] == "evt-1"
    assert payload["header"]["event_type"] == "calendar.calendar.changed_v4"
    assert payload["header"]["token"] == sim.verification_token
    assert payload["header"]["app_id"] == sim.app_id
    assert len(payload["header"]["create_time"]) == 13
    assert payload["event"]["user_id_list"][0]["open_id"] == "ou_alice"
    assert payload["event"]["user_id_list"][0]["union_id"].startswith("on_")
    assert [(d.delivery_id, d.open_ids, d.status) for d in sim.deliveries] == [("evt-1", ("ou_alice",), 200)]


def test_push_url_verification(sim: FeishuSimulator, receiver: _Receiver) -> None:
    # GIVEN a callback endpoint
    # WHEN the challenge is pushed
    sim.push_url_verification("chal-123", callback_url=receiver.url)
    # THEN the body is encrypted url_verification with the verification token
    headers, body = receiver.requests[0]
    assert sim.encrypt_key is not None
    payload = json.loads(decrypt(sim.encrypt_key, json.loads(body)["encrypt"]))
    assert payload == {"challenge": "chal-123", "token": sim.verification_token, "type": "url_verification"}
    assert "X-Lark-Signature" not in headers


def test_auto_push_retries_until_200(sim: FeishuSimulator) -> None:
    # GIVEN a subscribed user and a callback that fails twice before answering 200
    failing = _Receiver(statuses=[500, 503])
    try:
        sim.set_subscribed("ou_alice")
        sim.set_callback_url(failing.url)
        # WHEN a calendar changes
        sim.create_calendar("ou_alice", summary="new")
        assert sim.wait_for_pushes(timeout=5)
        # THEN the same event was delivered three times with statuses 500, 503, 200
        assert [(d.attempt, d.status) for d in sim.deliveries] == [(1, 500), (2, 503), (3, 200)]
        assert len({d.delivery_id for d in sim.deliveries}) == 1
        assert len(failing.requests) == 3
    finally:
        failing.close()


def test_no_auto_push_for_unsubscribed_user(sim: FeishuSimulator, receiver: _Receiver) -> None:
    # GIVEN an unsubscribed user and a callback URL
    sim.set_callback_url(receiver.url)
    # WHEN a calendar changes
    sim.create_calendar("ou_alice")
    assert sim.wait_for_pushes(timeout=5)
    # THEN nothing is pushed
    assert sim.deliveries == []


# --- admin API ---------------------------------------------------------------------------------


def test_admin_api_drives_the_world(sim: FeishuSimulator) -> None:
    # GIVEN the admin API
    base = f"{sim.url}/_sim/users/ou_alice/calendars"
    # WHEN a calendar is created, patched, listed and deleted over HTTP
    created = requests.post(base, json={"summary": "via admin"}, timeout=TIMEOUT).json()["calendar_id"]
    patched = requests.patch(f"{base}/{created}", json={"summary": "patched"}, timeout=TIMEOUT)
    listed = requests.get(base, timeout=TIMEOUT).json()
    bad = requests.patch(f"{base}/{created}", json={"colour": 1}, timeout=TIMEOUT)
    deleted = requests.delete(f"{base}/{created}", timeout=TIMEOUT)
    expired = requests.post(f"{sim.url}/_sim/expire-sync-tokens", timeout=TIMEOUT)
    # THEN the world follows and errors are 4xx
    assert created.endswith("@group.calendar.feishu.cn")
    assert patched.status_code == 200
    assert any(c["calendar_id"] == created and c["summary"] == "patched" for c in listed)
    assert bad.status_code == 400
    assert deleted.status_code == 200
    assert expired.status_code == 200
    assert created not in {c["calendar_id"] for c in sim.calendars("ou_alice")}
    assert requests.get(f"{sim.url}/_sim/users/ou_nobody/calendars", timeout=TIMEOUT).status_code == 404
