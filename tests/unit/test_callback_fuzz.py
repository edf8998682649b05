"""Property-based fuzzing of ``CallbackVerifier.verify``.

The property, for every input: the verifier returns one of the documented results (``Challenge``,
``CalendarChanged``, ``IgnoredEvent``) or raises ``CallbackRejected`` with a 4xx status
(400/401/403/413) and a short reason — never any other exception, which the handler would turn
into a 5xx. Accepted events must also be authentic: right token, right app, fresh timestamp.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feishu_mirror import crypto
from feishu_mirror.callback import (
    CALENDAR_CHANGED,
    MAX_BODY_BYTES,
    MAX_CHALLENGE_LENGTH,
    MAX_EVENT_ID_LENGTH,
    CalendarChanged,
    CallbackVerifier,
    Challenge,
    IgnoredEvent,
)
from feishu_mirror.errors import CallbackRejected
from tests import fuzzing
from tests.fuzzing import UNIT

KEY = "fuzz-encrypt-key"
TOKEN = "fuzz-verification-token"
APP_ID = "cli_fuzz_app"
NOW = 1_800_000_000
SKEW = 300

Outcome = Challenge | CalendarChanged | IgnoredEvent | CallbackRejected


def verifier(encrypt_key: str = KEY) -> CallbackVerifier:
    # A float clock, as time.time() is: arithmetic with a 400-digit timestamp must not overflow.
    return CallbackVerifier(
        encrypt_key=encrypt_key,
        verification_token=TOKEN,
        app_id=APP_ID,
        max_skew_seconds=SKEW,
        clock=lambda: float(NOW),
    )


ENCRYPTED, PLAINTEXT = verifier(), verifier(encrypt_key="")
modes = st.sampled_from([ENCRYPTED, PLAINTEXT])


def outcome(v: CallbackVerifier, headers: dict[str, str], body: bytes) -> Outcome:
    """Run the verifier; check the shape of whatever it answers. Any other exception fails the test."""
    try:
        result: Outcome = v.verify(headers, body)
    except CallbackRejected as exc:
        result = exc
    if isinstance(result, CallbackRejected):
        assert result.status in fuzzing.REJECTION_STATUSES, result.status
        assert result.reason
        assert len(result.reason) <= 80
        assert result.reason.isprintable()
        assert str(result) == result.reason
        return result
    assert isinstance(result, Challenge | CalendarChanged | IgnoredEvent), result
    if isinstance(result, Challenge):
        assert 0 < len(result.challenge) <= MAX_CHALLENGE_LENGTH
    elif isinstance(result, IgnoredEvent) and result.event_type == "v1":
        # a v1 event is only logged: its uuid, whatever it was, must fit a log line
        assert len(result.event_id) <= MAX_EVENT_ID_LENGTH
        result.event_id.encode("utf-8")
    else:
        # event ids and open ids become DynamoDB keys and log fields: printable, bounded, never empty
        assert 0 < len(result.event_id) <= MAX_EVENT_ID_LENGTH
        assert result.event_id.isprintable()
    if isinstance(result, IgnoredEvent):
        result.event_type.encode("utf-8")
    if isinstance(result, CalendarChanged):
        assert result.open_ids
        assert len(set(result.open_ids)) == len(result.open_ids)
        assert all(0 < len(o) <= MAX_EVENT_ID_LENGTH and o.isprintable() for o in result.open_ids)
    return result


def assert_authentic(result: Outcome, payload: Any) -> None:
    """Whatever was accepted carried the right token (and, for v2 events, the right app and type)."""
    if isinstance(result, CallbackRejected):
        return
    assert isinstance(payload, dict)
    if isinstance(result, Challenge):
        assert payload.get("token") == TOKEN
        assert payload["challenge"] == result.challenge
    elif isinstance(result, CalendarChanged):
        assert payload["header"]["token"] == TOKEN
        assert payload["header"]["app_id"] == APP_ID
        assert payload["header"]["event_type"] == CALENDAR_CHANGED
        assert result.payload == payload
    elif result.event_type == "v1":
        assert payload.get("token") == TOKEN
    else:
        assert payload["header"]["token"] == TOKEN


# ------------------------------------------------------------------ anything at all


@UNIT
@given(v=modes, headers=fuzzing.header_maps, body=st.binary(max_size=512))
def test_arbitrary_bytes_and_headers_get_a_result_or_a_4xx(
    v: CallbackVerifier, headers: dict[str, str], body: bytes
) -> None:
    # GIVEN any bytes and any header map WHEN verified THEN a documented result or a 4xx with a reason
    result = outcome(v, headers, body)
    # AND random bytes are never mistaken for an authentic encrypted event
    if v is ENCRYPTED:
        assert isinstance(result, CallbackRejected)


@UNIT
@given(
    v=modes, headers=fuzzing.header_maps, value=fuzzing.json_values, encoding=fuzzing.encodings, ascii_=st.booleans()
)
def test_arbitrary_json_in_any_encoding_gets_a_result_or_a_4xx(
    v: CallbackVerifier, headers: dict[str, str], value: Any, encoding: str, ascii_: bool
) -> None:
    # GIVEN any JSON document (lone surrogates, huge numbers, NaN included) in any text encoding
    body = fuzzing.encoded_json(value, encoding, ascii_)
    # WHEN verified THEN a documented result or a 4xx; nothing unsigned passes in encrypted mode
    result = outcome(v, headers, body)
    if v is ENCRYPTED:
        assert isinstance(result, CallbackRejected)


@UNIT
@given(v=modes, body=fuzzing.nested_json())
def test_deeply_nested_json_is_refused_not_a_crash(v: CallbackVerifier, body: bytes) -> None:
    # GIVEN arrays/objects nested up to tens of thousands deep, within the size limit
    # WHEN verified THEN a documented result or a 4xx (Python's recursion limit is no 500)
    assert isinstance(outcome(v, {}, body), CallbackRejected)


@UNIT
@given(v=modes, pattern=st.binary(min_size=1, max_size=8), size=st.integers(min_value=0, max_value=3 * MAX_BODY_BYTES))
def test_bodies_over_the_limit_are_413_whatever_they_hold(v: CallbackVerifier, pattern: bytes, size: int) -> None:
    # GIVEN a body of any size around the limit
    body = (pattern * (size // len(pattern) + 1))[:size]
    # WHEN verified THEN over the limit means 413, under it never does
    result = outcome(v, {}, body)
    assert (isinstance(result, CallbackRejected) and result.status == 413) == (size > MAX_BODY_BYTES)


# ------------------------------------------------------------------ valid crypto around malformed payloads


@UNIT
@given(
    plaintext=fuzzing.json_values.map(fuzzing.as_plaintext) | st.binary(max_size=256) | fuzzing.nested_json(5_000),
    skew=st.integers(min_value=-SKEW, max_value=SKEW),
    nonce=fuzzing.utf8_text,
    signed=st.booleans(),
)
def test_valid_crypto_around_anything_gets_a_result_or_a_4xx(
    plaintext: bytes, skew: int, nonce: str, signed: bool
) -> None:
    # GIVEN any plaintext, encrypted with the right key and (maybe) signed with it, fresh
    body = fuzzing.sealed(KEY, plaintext)
    headers = fuzzing.signed_headers(KEY, body, str(NOW + skew), nonce) if signed else {}
    # WHEN verified THEN a documented result or a 4xx
    result = outcome(ENCRYPTED, headers, body)
    # AND only a JSON document with the right token can be accepted
    if not isinstance(result, CallbackRejected):
        assert_authentic(result, json.loads(plaintext))


@UNIT
@given(data=st.data(), skew=st.integers(min_value=-SKEW, max_value=SKEW))
def test_feishu_shaped_payloads_with_wrong_types_inside_valid_crypto(data: st.DataObject, skew: int) -> None:
    # GIVEN an event, challenge or v1 payload whose known fields may hold wrong types (event_id a list,
    # user_id_list entries numbers, token missing, ...), encrypted and signed with the right key
    payload = data.draw(fuzzing.feishu_payloads(TOKEN, APP_ID))
    body = fuzzing.sealed(KEY, fuzzing.as_plaintext(payload))
    headers = fuzzing.signed_headers(KEY, body, str(NOW + skew))
    # WHEN verified THEN a documented result or a 4xx, and anything accepted is authentic
    assert_authentic(outcome(ENCRYPTED, headers, body), payload)


@UNIT
@given(data=st.data())
def test_feishu_shaped_payloads_with_wrong_types_in_plaintext_mode(data: st.DataObject) -> None:
    # GIVEN an app without an encrypt key and any Feishu-shaped payload, sent as plain JSON
    payload = data.draw(fuzzing.feishu_payloads(TOKEN, APP_ID))
    # WHEN verified THEN a documented result or a 4xx, and anything accepted carries the right token
    assert_authentic(outcome(PLAINTEXT, {}, fuzzing.as_plaintext(payload)), payload)


@UNIT
@given(
    v=modes,
    token=st.one_of(
        fuzzing.any_text,
        fuzzing.json_values,
        st.sampled_from([TOKEN, TOKEN + "\x00", TOKEN.upper(), TOKEN[:-1], " " + TOKEN, TOKEN + "\ud800"]),
    ),
    shape=st.sampled_from(["challenge", "event", "v1"]),
)
def test_tokens_of_any_form_are_accepted_only_when_equal(v: CallbackVerifier, token: Any, shape: str) -> None:
    # GIVEN a well-formed challenge, event or v1 event carrying any token value (lone surrogates, wrong
    # types, near misses), encrypted and signed with the right key when the app has one
    if shape == "challenge":
        payload: dict[str, Any] = {"type": "url_verification", "challenge": "c-1", "token": token}
    elif shape == "event":
        payload = fuzzing.calendar_changed(token, APP_ID)
    else:
        payload = {"uuid": "u-1", "type": "event_callback", "token": token}
    plaintext = fuzzing.as_plaintext(payload)
    if v is ENCRYPTED:
        body = fuzzing.sealed(KEY, plaintext)
        headers = fuzzing.signed_headers(KEY, body, str(NOW))
    else:
        body, headers = plaintext, {}
    # WHEN verified THEN it is accepted exactly when the token is the configured one, else 401
    result = outcome(v, headers, body)
    assert isinstance(result, CallbackRejected) != (token == TOKEN), result
    if isinstance(result, CallbackRejected):
        assert (result.status, result.reason) == (401, "verification token mismatch")


@UNIT
@given(headers=fuzzing.signature_header_sets, forge=st.sampled_from(["as-is", "signed", "right-signature"]))
def test_signature_headers_of_any_form_around_a_sealed_event(headers: dict[str, str], forge: str) -> None:
    # GIVEN a valid sealed event and signature headers of any form: garbage, or a timestamp/nonce of any
    # form signed with the right key, or the right signature under garbage timestamp and nonce
    body = fuzzing.sealed(KEY, fuzzing.as_plaintext(fuzzing.calendar_changed(TOKEN, APP_ID)))
    timestamp, nonce = headers["x-lark-request-timestamp"], headers["x-lark-request-nonce"]
    right = fuzzing.signed_headers(KEY, body, str(NOW))
    if forge == "signed" and timestamp.isascii() and nonce.isascii():
        headers = fuzzing.signed_headers(KEY, body, timestamp, nonce)
    elif forge == "right-signature":
        headers = {**headers, "x-lark-signature": right["x-lark-signature"]}
    # WHEN verified THEN it is accepted only if the signature is right for a fresh timestamp
    result = outcome(ENCRYPTED, headers, body)
    if isinstance(result, CalendarChanged):
        sent = headers["x-lark-request-timestamp"]
        assert _within(sent)
        expected = crypto.signature(sent, headers["x-lark-request-nonce"], KEY, body)
        assert headers["x-lark-signature"].strip().lower() == expected


def test_the_payload_strategy_does_produce_valid_events() -> None:
    # GIVEN the payload strategy WHEN its untouched form is verified THEN it is accepted: the fuzz above
    # exercises the acceptance path as well as the refusals
    payload = fuzzing.calendar_changed(TOKEN, APP_ID, open_ids=("ou_1", "ou_2"))
    body = fuzzing.sealed(KEY, fuzzing.as_plaintext(payload))
    result = outcome(ENCRYPTED, fuzzing.signed_headers(KEY, body, str(NOW)), body)
    assert isinstance(result, CalendarChanged)
    assert result.open_ids == ("ou_1", "ou_2")


@UNIT
@given(timestamp=fuzzing.header_values | st.integers(min_value=NOW - 2 * SKEW, max_value=NOW + 2 * SKEW).map(str))
def test_signed_timestamps_of_any_form_are_accepted_only_within_the_window(timestamp: str) -> None:
    # GIVEN a valid event signed with the right key over any timestamp header value (huge numbers,
    # full-width digits, signs, garbage)
    body = fuzzing.sealed(KEY, fuzzing.as_plaintext(fuzzing.calendar_changed(TOKEN, APP_ID)))
    try:
        headers = fuzzing.signed_headers(KEY, body, timestamp)
    except UnicodeEncodeError:
        headers = {"x-lark-request-timestamp": timestamp, "x-lark-request-nonce": "n", "x-lark-signature": "0" * 64}
    # WHEN verified THEN it is accepted only if the timestamp is an integer within ±SKEW of now
    result = outcome(ENCRYPTED, headers, body)
    assert isinstance(result, CalendarChanged) == _within(timestamp), (timestamp, result)


def _within(timestamp: str) -> bool:
    try:
        return abs(NOW - int(timestamp)) <= SKEW
    except ValueError:
        return False


@pytest.mark.parametrize("v", [ENCRYPTED, PLAINTEXT], ids=["encrypted", "plaintext"])
def test_known_crashers_found_by_the_fuzz_are_4xx(v: CallbackVerifier) -> None:
    # GIVEN the unsigned inputs the fuzz first found crashing the verifier (kept as fixed regressions)
    bodies = [
        b"[" * 50_000 + b"]" * 50_000,  # RecursionError in json.loads
        json.dumps({"type": "url_verification", "token": "\ud800", "challenge": "c"}).encode(),  # surrogate token
        json.dumps({"uuid": "u", "token": "\udfff"}).encode(),
        json.dumps(fuzzing.calendar_changed(TOKEN, APP_ID, open_ids=("ou_\ud800",))).encode(),  # surrogate open_id
        json.dumps(fuzzing.calendar_changed(TOKEN, APP_ID, event_id="evt\x00")).encode(),
    ]
    for body in bodies:
        # WHEN verified THEN each is refused with a 4xx
        assert isinstance(outcome(v, {}, body), CallbackRejected)


@pytest.mark.parametrize(
    ("timestamp", "nonce"),
    [("9" * 400, "n"), ("-" + "9" * 400, "n"), (str(NOW), "\ud800"), ("\udfff", "n")],
    ids=["huge-timestamp", "huge-negative-timestamp", "surrogate-nonce", "surrogate-timestamp"],
)
def test_known_crashers_in_signature_headers_are_401(timestamp: str, nonce: str) -> None:
    # GIVEN a sealed event under signature headers the fuzz first found crashing the verifier: a
    # timestamp past a float's range (signed with the right key), lone surrogates in the headers
    body = fuzzing.sealed(KEY, fuzzing.as_plaintext(fuzzing.calendar_changed(TOKEN, APP_ID)))
    try:
        headers = fuzzing.signed_headers(KEY, body, timestamp, nonce)
    except UnicodeEncodeError:
        headers = {"x-lark-request-timestamp": timestamp, "x-lark-request-nonce": nonce, "x-lark-signature": "0" * 64}
    # WHEN verified THEN refused with a 401
    result = outcome(ENCRYPTED, headers, body)
    assert isinstance(result, CallbackRejected)
    assert result.status == 401
