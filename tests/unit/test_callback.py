"""Callback verification: every class of bad input is refused with the right status and a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from feishu_mirror import crypto
from feishu_mirror.callback import (
    CALENDAR_CHANGED,
    DEFAULT_MAX_AGE_SECONDS,
    DEFAULT_MAX_AHEAD_SECONDS,
    EVENT_CHANGED,
    FEISHU_RETRY_SPAN_SECONDS,
    CallbackVerifier,
    Challenge,
    ChangeNotice,
    IgnoredNotice,
)
from feishu_mirror.errors import CallbackRejected, ConfigError

KEY = "encrypt-key-for-tests"
TOKEN = "verification-token-for-tests"
APP_ID = "cli_test_app"
NOW = 1_800_000_000


def verifier(encrypt_key: str = KEY) -> CallbackVerifier:
    return CallbackVerifier(encrypt_key=encrypt_key, verification_token=TOKEN, app_id=APP_ID, clock=lambda: NOW)


def event(open_ids: list[str] | None = None, **header: Any) -> dict[str, Any]:
    return {
        "schema": "2.0",
        "header": {
            "event_id": "evt-1",
            "event_type": CALENDAR_CHANGED,
            "create_time": str(NOW * 1000),
            "token": TOKEN,
            "app_id": APP_ID,
            "tenant_key": "tenant",
            **header,
        },
        "event": {"user_id_list": [{"open_id": o, "union_id": "on_x", "user_id": "u"} for o in open_ids or ["ou_1"]]},
    }


def signed(payload: dict[str, Any] | bytes, *, timestamp: int = NOW, key: str = KEY) -> tuple[dict[str, str], bytes]:
    plaintext = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    body = json.dumps({"encrypt": crypto.encrypt(crypto.derive_key(key), plaintext)}).encode()
    headers = {
        "x-lark-request-timestamp": str(timestamp),
        "x-lark-request-nonce": "nonce-1",
        "x-lark-signature": crypto.signature(str(timestamp), "nonce-1", key, body),
    }
    return headers, body


def rejected(headers: dict[str, str], body: bytes, v: CallbackVerifier | None = None) -> CallbackRejected:
    with pytest.raises(CallbackRejected) as caught:
        (v or verifier()).verify(headers, body)
    return caught.value


def test_a_signed_encrypted_calendar_change_names_each_user_once() -> None:
    headers, body = signed(event(["ou_1", "ou_2", "ou_1"]))
    result = verifier().verify(headers, body)
    assert isinstance(result, ChangeNotice)
    assert result.delivery_id == "evt-1"
    assert result.open_ids == ("ou_1", "ou_2")


def test_an_event_change_names_its_calendar_and_its_users() -> None:
    # GIVEN a calendar.calendar.event.changed_v4 push (without the gray-release event fields)
    payload = event(["ou_1"], event_type=EVENT_CHANGED)
    payload["event"]["calendar_id"] = "feishu.cn_abc@group.calendar.feishu.cn"
    headers, body = signed(payload)
    # WHEN it is verified THEN it is a change of that calendar's events for that user
    result = verifier().verify(headers, body)
    assert isinstance(result, ChangeNotice)
    assert (result.open_ids, result.calendar_id) == (("ou_1",), "feishu.cn_abc@group.calendar.feishu.cn")


@pytest.mark.parametrize("calendar_id", [None, "", 7, "x" * 513, "日" * 171, "bad\u0000id"])
def test_an_event_change_without_a_usable_calendar_id_is_refused(calendar_id: Any) -> None:
    payload = event(["ou_1"], event_type=EVENT_CHANGED)
    payload["event"]["calendar_id"] = calendar_id
    headers, body = signed(payload)
    error = rejected(headers, body)
    assert (error.status, error.reason) == (400, "event.calendar_id must be a non-empty string")


@pytest.mark.parametrize("open_id", ["ou 1", "ou_1\u00e9", "ou/1", "ou.1", "x" * 129])
def test_a_user_whose_open_id_is_not_one_is_refused(open_id: str) -> None:
    # GIVEN a signed push naming a user by something no open_id looks like (printable as it may be)
    headers, body = signed(event(["ou_1", open_id]))
    # THEN it is refused, by the one rule every door of the mirror applies to open_ids
    error = rejected(headers, body)
    assert (error.status, error.reason) == (400, "every entry of event.user_id_list needs an open_id")


def test_a_calendar_list_change_names_no_calendar() -> None:
    headers, body = signed(event(["ou_1"]))
    result = verifier().verify(headers, body)
    assert isinstance(result, ChangeNotice)
    assert result.calendar_id == ""


def test_an_encrypted_url_verification_is_answered_without_signature_headers() -> None:
    _, body = signed({"challenge": "abc123", "token": TOKEN, "type": "url_verification"})
    assert verifier().verify({}, body) == Challenge("abc123")


def test_a_plaintext_challenge_is_refused_when_an_encrypt_key_is_configured() -> None:
    body = json.dumps({"challenge": "abc", "token": TOKEN, "type": "url_verification"}).encode()
    assert rejected({}, body).status == 400


def test_a_challenge_with_the_wrong_token_is_refused() -> None:
    _, body = signed({"challenge": "abc123", "token": "nope", "type": "url_verification"})
    assert (rejected({}, body).status, rejected({}, body).reason) == (401, "verification token mismatch")


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"", 400, "empty body"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'"text"', 400, "JSON object"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b'{"encrypt": 5}', 400, "must be encrypted"),
        (b'{"encrypt": "%%%"}', 400, "could not be decrypted"),
        (b'{"encrypt": "AAAA"}', 400, "could not be decrypted"),
        (b"{" + b" " * (129 * 1024) + b"}", 413, "too large"),
    ],
)
def test_malformed_bodies_get_a_4xx_with_a_reason(body: bytes, status: int, reason: str) -> None:
    error = rejected({}, body)
    assert error.status == status
    assert reason in error.reason


def test_a_body_encrypted_with_another_key_is_refused() -> None:
    headers, body = signed(event(), key="someone else's key")
    headers["x-lark-signature"] = crypto.signature(headers["x-lark-request-timestamp"], "nonce-1", KEY, body)
    assert rejected(headers, body).reason == "encrypt could not be decrypted to a JSON object"


def test_valid_crypto_around_non_json_plaintext_is_refused() -> None:
    headers, body = signed(b"\x00\x01 not json")
    assert rejected(headers, body).reason == "encrypt could not be decrypted to a JSON object"


def test_unsigned_bodies_are_no_padding_oracle() -> None:
    # GIVEN unsigned bodies (only url_verification may be unsigned) that fail in the padding or in the JSON
    _, bad_padding = signed(event(), key="another key")
    _, bad_json = signed(b"not json at all")
    _, not_an_object = signed(b"[1, 2, 3]")
    # WHEN refused THEN nothing in the answer tells the failures apart
    answers = {
        (rejected({}, body).status, rejected({}, body).reason) for body in (bad_padding, bad_json, not_an_object)
    }
    assert answers == {(400, "encrypt could not be decrypted to a JSON object")}


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: h.update({"x-lark-signature": "0" * 64}), "signature mismatch"),
        (lambda h: h.pop("x-lark-signature"), "incomplete signature headers"),
        (lambda h: h.update({"x-lark-request-nonce": "other"}), "signature mismatch"),
        (lambda h: h.clear(), "missing signature headers"),
    ],
)
def test_signature_problems_are_401(mutate: Any, reason: str) -> None:
    headers, body = signed(event())
    mutate(headers)
    error = rejected(headers, body)
    assert (error.status, error.reason) == (401, reason)


def test_a_tampered_body_fails_the_signature() -> None:
    headers, body = signed(event())
    assert rejected(headers, body.replace(b'"}', b'A"}')).reason == "signature mismatch"


@pytest.mark.parametrize("age", [DEFAULT_MAX_AGE_SECONDS + 1, -DEFAULT_MAX_AHEAD_SECONDS - 1, 10**6, -(10**6)])
def test_stale_or_future_timestamps_are_refused(age: int) -> None:
    headers, body = signed(event(), timestamp=NOW - age)
    assert rejected(headers, body).reason == "stale timestamp"


@pytest.mark.parametrize("age", [0, 299, DEFAULT_MAX_AGE_SECONDS, -DEFAULT_MAX_AHEAD_SECONDS])
def test_a_timestamp_within_the_window_is_accepted(age: int) -> None:
    headers, body = signed(event(), timestamp=NOW - age)
    assert isinstance(verifier().verify(headers, body), ChangeNotice)


def test_a_retry_carrying_its_first_attempts_timestamp_passes_through_feishus_whole_retry_schedule() -> None:
    # GIVEN a delivery signed when first sent, and Feishu's retries after 15 s, 5 min, 1 h and 6 h (each
    # attempt given 3 s), should a retry carry the first attempt's timestamp and signature unchanged
    first_sent = NOW - FEISHU_RETRY_SPAN_SECONDS - 4 * 3
    headers, body = signed(event(), timestamp=first_sent)
    # WHEN the last retry arrives THEN it is accepted (the idempotency record makes it a duplicate)
    assert isinstance(verifier().verify(headers, body), ChangeNotice)
    assert DEFAULT_MAX_AGE_SECONDS > FEISHU_RETRY_SPAN_SECONDS + 4 * 3


def test_a_non_numeric_timestamp_is_refused() -> None:
    headers, body = signed(event(), timestamp=NOW)
    headers["x-lark-request-timestamp"] = "soon"
    headers["x-lark-signature"] = crypto.signature("soon", "nonce-1", KEY, body)
    assert rejected(headers, body).reason == "timestamp is not an integer"


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        (event(token="wrong"), 401, "verification token mismatch"),
        (event(token=None), 401, "verification token mismatch"),
        (event(app_id="cli_other"), 403, "another app"),
        (event(event_id=""), 400, "event_id"),
        (event(event_id=7), 400, "event_id"),
        (event(event_id="x" * 129), 400, "event_id"),
        (event(event_type=["x"]), 400, "event_type"),
        ({**event(), "header": "nope"}, 400, "header must be a JSON object"),
        ({**event(), "event": None}, 400, "event must be a JSON object"),
        ({**event(), "event": {"user_id_list": "ou_1"}}, 400, "user_id_list"),
        ({**event(), "event": {"user_id_list": [{"union_id": "x"}]}}, 400, "open_id"),
        ({**event(), "event": {"user_id_list": [{"open_id": 5}]}}, 400, "open_id"),
        ({**event(), "event": {"user_id_list": ["ou_1"]}}, 400, "open_id"),
        ({"hello": "world"}, 400, "unrecognised payload"),
    ],
)
def test_bad_events_inside_valid_crypto_are_refused(payload: dict[str, Any], status: int, reason: str) -> None:
    headers, body = signed(payload)
    error = rejected(headers, body)
    assert error.status == status
    assert reason in error.reason


def test_other_event_types_and_empty_user_lists_are_ignored_not_refused() -> None:
    for payload in (event(event_type="im.message.receive_v1"), {**event(), "event": {"user_id_list": []}}):
        headers, body = signed(payload)
        assert isinstance(verifier().verify(headers, body), IgnoredNotice)


def test_schema_1_events_are_ignored_after_the_token_check() -> None:
    headers, body = signed({"uuid": "u-1", "token": TOKEN, "type": "event_callback", "event": {"type": "x"}})
    assert verifier().verify(headers, body) == IgnoredNotice("u-1", "v1")
    headers, body = signed({"uuid": "u-1", "token": "bad", "type": "event_callback", "event": {}})
    assert rejected(headers, body).status == 401


@pytest.mark.parametrize(
    ("encrypt_key", "token", "named"),
    [("", TOKEN, "FEISHU_ENCRYPT_KEY"), (KEY, "", "FEISHU_VERIFICATION_TOKEN"), ("", "", "FEISHU_ENCRYPT_KEY and")],
)
def test_without_an_encrypt_key_or_a_verification_token_there_is_no_verifier(
    encrypt_key: str, token: str, named: str
) -> None:
    # GIVEN an app configured without its Encrypt Key or Verification Token (a plaintext app)
    # WHEN a verifier is built THEN configuration fails closed, naming what is missing: nothing can be
    # accepted unsigned or unchecked (the handler answers 503 and counts it for the alarm)
    with pytest.raises(ConfigError, match=named):
        CallbackVerifier(encrypt_key=encrypt_key, verification_token=token, app_id=APP_ID)


def test_plaintext_bodies_are_refused_even_with_the_right_token() -> None:
    for payload in (event(), {"type": "url_verification", "challenge": "c", "token": TOKEN}):
        assert rejected({}, json.dumps(payload).encode()).reason == "body must be encrypted"
