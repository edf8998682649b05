"""Property-based fuzzing of ``CallbackVerifier.verify``.

The property, for every input: the verifier returns one of the documented results (``Challenge``,
``ChangeNotice``, ``IgnoredNotice``) or raises ``CallbackRejected`` with a 4xx status
(400/401/403/413) and a short reason — never any other exception, which the handler would turn
into a 5xx. Accepted events must also be authentic: right token, right app, fresh timestamp; an
accepted event change names the payload's calendar. Every input tried and its outcome are counted for
the README's fuzz figures (``tests/fuzz_report.py``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import currently_in_test_context, given, settings
from hypothesis import strategies as st

from feishu_mirror import crypto
from feishu_mirror.callback import (
    CALENDAR_CHANGED,
    EVENT_CHANGED,
    MAX_BODY_BYTES,
    MAX_CHALLENGE_LENGTH,
    CallbackVerifier,
    Challenge,
    ChangeNotice,
    IgnoredNotice,
)
from feishu_mirror.errors import CallbackRejected
from feishu_mirror.identifiers import MAX_DELIVERY_ID_LENGTH, is_calendar_id, is_open_id
from tests import fuzz_report, fuzzing
from tests.fuzzing import UNIT

KEY = "fuzz-encrypt-key"
TOKEN = "fuzz-verification-token"
APP_ID = "cli_fuzz_app"
NOW = 1_800_000_000
SKEW = 300  # accepted age of a signed timestamp
AHEAD = 60  # how far ahead of the clock a signed timestamp may be

Outcome = Challenge | ChangeNotice | IgnoredNotice | CallbackRejected


def verifier(encrypt_key: str = KEY) -> CallbackVerifier:
    # A float clock, as time.time() is: arithmetic with a 400-digit timestamp must not overflow.
    return CallbackVerifier(
        encrypt_key=encrypt_key,
        verification_token=TOKEN,
        app_id=APP_ID,
        max_skew_seconds=SKEW,
        max_ahead_seconds=AHEAD,
        clock=lambda: float(NOW),
    )


ENCRYPTED = verifier()  # the only kind there is: without a key or token no verifier can be built


def delivered(payload: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """Headers and body of ``payload`` as Feishu sends it: sealed and signed."""
    body = fuzzing.sealed(KEY, fuzzing.as_plaintext(payload))
    return fuzzing.signed_headers(KEY, body, str(NOW)), body


def _is_event_changed(payload: Any) -> bool:
    header = payload.get("header") if isinstance(payload, dict) else None
    return isinstance(header, dict) and header.get("event_type") == EVENT_CHANGED


def _kind(result: Outcome) -> str:
    if isinstance(result, CallbackRejected):
        return fuzz_report.status_key(result.status)
    if isinstance(result, Challenge):
        return fuzz_report.CHALLENGE
    if isinstance(result, IgnoredNotice):
        return fuzz_report.IGNORED
    return fuzz_report.EVENT_CHANGE if _is_event_changed(result.payload) else fuzz_report.CALENDAR_CHANGE


def _count(kind: str, payload: Any) -> None:
    """Count one fuzz input and its outcome (not the fixed examples: they are not fuzzing)."""
    if currently_in_test_context():
        fuzz_report.TALLY.record(fuzz_report.VERIFIER, kind, event_changed=_is_event_changed(payload))


def outcome(v: CallbackVerifier, headers: dict[str, str], body: bytes, payload: Any = None) -> Outcome:
    """Run the verifier; check the shape of whatever it answers. Any other exception fails the test.

    ``payload`` is the Feishu-shaped document inside ``body`` when there is one (to count event changes).
    """
    try:
        result: Outcome = v.verify(headers, body)
    except CallbackRejected as exc:
        result = exc
    except Exception:
        _count(fuzz_report.ESCAPED, payload)
        raise
    _count(_kind(result), payload)
    if isinstance(result, CallbackRejected):
        assert result.status in fuzzing.REJECTION_STATUSES, result.status
        assert result.reason
        assert len(result.reason) <= 80
        assert result.reason.isprintable()
        assert str(result) == result.reason
        return result
    assert isinstance(result, Challenge | ChangeNotice | IgnoredNotice), result
    if isinstance(result, Challenge):
        assert 0 < len(result.challenge) <= MAX_CHALLENGE_LENGTH
    elif isinstance(result, IgnoredNotice) and result.event_type == "v1":
        # a v1 event is only logged: its uuid, whatever it was, must fit a log line
        assert len(result.delivery_id) <= MAX_DELIVERY_ID_LENGTH
        result.delivery_id.encode("utf-8")
    else:
        # delivery ids and open ids become DynamoDB keys and log fields: printable, bounded, never empty
        assert 0 < len(result.delivery_id) <= MAX_DELIVERY_ID_LENGTH
        assert result.delivery_id.isprintable()
    if isinstance(result, IgnoredNotice):
        result.event_type.encode("utf-8")
    if isinstance(result, ChangeNotice):
        assert result.open_ids
        assert len(set(result.open_ids)) == len(result.open_ids)
        assert all(is_open_id(o) for o in result.open_ids)
        # an event change names its calendar, which becomes a DynamoDB set member and a log field:
        # printable, bounded, never empty, the payload's own; a calendar-list change names none
        if _is_event_changed(result.payload):
            assert is_calendar_id(result.calendar_id)
            assert result.calendar_id.isprintable()
            assert result.calendar_id == result.payload["event"]["calendar_id"]
        else:
            assert result.calendar_id == ""
    return result


def assert_authentic(result: Outcome, payload: Any) -> None:
    """Whatever was accepted carried the right token (and, for v2 events, the right app and type)."""
    if isinstance(result, CallbackRejected):
        return
    assert isinstance(payload, dict)
    # the document as the verifier reads it: an escaped surrogate pair that was two lone surrogates in
    # ``payload`` is one character once parsed
    sent = json.loads(fuzzing.as_plaintext(payload))
    if isinstance(result, Challenge):
        assert payload.get("token") == TOKEN
        assert sent["challenge"] == result.challenge
    elif isinstance(result, ChangeNotice):
        assert payload["header"]["token"] == TOKEN
        assert payload["header"]["app_id"] == APP_ID
        if payload["header"]["event_type"] == EVENT_CHANGED:
            calendar_id = payload["event"]["calendar_id"]
            assert is_calendar_id(calendar_id)
            assert calendar_id.isprintable()
            assert result.calendar_id == calendar_id
        else:
            assert payload["header"]["event_type"] == CALENDAR_CHANGED
            assert result.calendar_id == ""
        # the same document as sent (compared as JSON text: a NaN in a gray field is not equal to itself)
        assert json.dumps(result.payload, sort_keys=True) == json.dumps(sent, sort_keys=True)
        # the users are the payload's, in its order, each once
        assert result.open_ids == tuple(dict.fromkeys(user["open_id"] for user in payload["event"]["user_id_list"]))
    elif result.event_type == "v1":
        assert payload.get("token") == TOKEN
    else:
        assert payload["header"]["token"] == TOKEN


# ------------------------------------------------------------------ anything at all


@UNIT
@given(headers=fuzzing.header_maps, body=st.binary(max_size=512))
def test_arbitrary_bytes_and_headers_get_a_result_or_a_4xx(headers: dict[str, str], body: bytes) -> None:
    # GIVEN any bytes and any header map WHEN verified THEN a documented result or a 4xx with a reason
    result = outcome(ENCRYPTED, headers, body)
    # AND random bytes are never mistaken for an authentic encrypted event
    assert isinstance(result, CallbackRejected)


@UNIT
@given(headers=fuzzing.header_maps, value=fuzzing.json_values, encoding=fuzzing.encodings, ascii_=st.booleans())
def test_arbitrary_json_in_any_encoding_gets_a_result_or_a_4xx(
    headers: dict[str, str], value: Any, encoding: str, ascii_: bool
) -> None:
    # GIVEN any JSON document (lone surrogates, huge numbers, NaN included) in any text encoding
    body = fuzzing.encoded_json(value, encoding, ascii_)
    # WHEN verified THEN a documented result or a 4xx; nothing unsigned passes in encrypted mode
    result = outcome(ENCRYPTED, headers, body)
    assert isinstance(result, CallbackRejected)


@UNIT
@given(body=fuzzing.nested_json())
def test_deeply_nested_json_is_refused_not_a_crash(body: bytes) -> None:
    # GIVEN arrays/objects nested up to tens of thousands deep, within the size limit
    # WHEN verified THEN a documented result or a 4xx (Python's recursion limit is no 500)
    assert isinstance(outcome(ENCRYPTED, {}, body), CallbackRejected)


@UNIT
@given(pattern=st.binary(min_size=1, max_size=8), size=st.integers(min_value=0, max_value=3 * MAX_BODY_BYTES))
def test_bodies_over_the_limit_are_413_whatever_they_hold(pattern: bytes, size: int) -> None:
    # GIVEN a body of any size around the limit
    body = (pattern * (size // len(pattern) + 1))[:size]
    # WHEN verified THEN over the limit means 413, under it never does
    result = outcome(ENCRYPTED, {}, body)
    assert (isinstance(result, CallbackRejected) and result.status == 413) == (size > MAX_BODY_BYTES)


# ------------------------------------------------------------------ valid crypto around malformed payloads


@UNIT
@given(
    plaintext=fuzzing.json_values.map(fuzzing.as_plaintext) | st.binary(max_size=256) | fuzzing.nested_json(5_000),
    skew=st.integers(min_value=-SKEW, max_value=AHEAD),
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
@given(data=st.data(), skew=st.integers(min_value=-SKEW, max_value=AHEAD))
def test_feishu_shaped_payloads_with_wrong_types_inside_valid_crypto(data: st.DataObject, skew: int) -> None:
    # GIVEN an event, challenge or v1 payload whose known fields may hold wrong types (event_id a list,
    # user_id_list entries numbers, token missing, ...), encrypted and signed with the right key
    payload = data.draw(fuzzing.feishu_payloads(TOKEN, APP_ID))
    body = fuzzing.sealed(KEY, fuzzing.as_plaintext(payload))
    headers = fuzzing.signed_headers(KEY, body, str(NOW + skew))
    # WHEN verified THEN a documented result or a 4xx, and anything accepted is authentic
    assert_authentic(outcome(ENCRYPTED, headers, body, payload), payload)


@UNIT
@given(data=st.data(), signed=st.booleans())
def test_feishu_shaped_payloads_in_plaintext_are_refused(data: st.DataObject, signed: bool) -> None:
    # GIVEN any Feishu-shaped payload (the right token included) sent as plain JSON, as an app without an
    # Encrypt Key would, signed with the right key or not
    payload = data.draw(fuzzing.feishu_payloads(TOKEN, APP_ID))
    body = fuzzing.as_plaintext(payload)
    headers = fuzzing.signed_headers(KEY, body, str(NOW)) if signed else {}
    # WHEN verified THEN it is refused: nothing unencrypted is accepted, not even a challenge
    assert isinstance(outcome(ENCRYPTED, headers, body, payload), CallbackRejected)


@UNIT
@given(
    token=st.one_of(
        fuzzing.any_text,
        fuzzing.json_values,
        st.sampled_from([TOKEN, TOKEN + "\x00", TOKEN.upper(), TOKEN[:-1], " " + TOKEN, TOKEN + "\ud800"]),
    ),
    shape=st.sampled_from(["challenge", "event", "event-changed", "v1"]),
)
def test_tokens_of_any_form_are_accepted_only_when_equal(token: Any, shape: str) -> None:
    # GIVEN a well-formed challenge, calendar change, event change or v1 event carrying any token value
    # (lone surrogates, wrong types, near misses), encrypted and signed with the right key when the app has one
    if shape == "challenge":
        payload: dict[str, Any] = {"type": "url_verification", "challenge": "c-1", "token": token}
    elif shape == "event":
        payload = fuzzing.calendar_changed(token, APP_ID)
    elif shape == "event-changed":
        payload = fuzzing.calendar_event_changed(token, APP_ID)
    else:
        payload = {"uuid": "u-1", "type": "event_callback", "token": token}
    headers, body = delivered(payload)
    # WHEN verified THEN it is accepted exactly when the token is the configured one, else 401
    result = outcome(ENCRYPTED, headers, body, payload)
    assert isinstance(result, CallbackRejected) != (token == TOKEN), result
    if isinstance(result, CallbackRejected):
        assert (result.status, result.reason) == (401, "verification token mismatch")


@UNIT
@given(data=st.data())
def test_event_changes_are_accepted_exactly_when_their_calendar_id_is_valid_whatever_the_gray_fields(
    data: st.DataObject,
) -> None:
    # GIVEN an authentic event change whose calendar_id is anything (a valid id up to the length limit, or
    # missing, empty, a wrong type, huge, control or format characters, lone surrogates) and whose gray
    # fields (calendar_event_id, change_type, rsvp_infos) are each right, wrong or left out; sealed and
    # signed with the right key when the app has one
    payload = data.draw(fuzzing.event_changed_payloads(TOKEN, APP_ID, ("ou_1", "ou_2")))
    headers, body = delivered(payload)
    # WHEN verified
    result = outcome(ENCRYPTED, headers, body, payload)
    # THEN it is accepted, naming that calendar, exactly when the calendar_id is one the mirror can key
    # items by (at most 512 bytes of UTF-8) and printable, and otherwise refused with a 400; the gray
    # fields (which the mirror does not use: a push is a ping) never change the answer
    calendar_id = payload["event"].get("calendar_id")
    if is_calendar_id(calendar_id) and calendar_id.isprintable():
        assert isinstance(result, ChangeNotice), result
        assert (result.calendar_id, result.open_ids) == (calendar_id, ("ou_1", "ou_2"))
    else:
        assert isinstance(result, CallbackRejected), result
        assert (result.status, result.reason) == (400, "event.calendar_id must be a non-empty string")
    assert_authentic(result, payload)


@settings(UNIT, max_examples=UNIT.max_examples // 4)  # a narrow property: fewer examples do
@given(data=st.data())
def test_a_calendar_change_carrying_event_change_fields_names_no_calendar(data: st.DataObject) -> None:
    # GIVEN an authentic calendar-list change that carries an event change's fields: a calendar_id of any
    # form and gray fields right, wrong or left out
    payload = data.draw(fuzzing.event_changed_payloads(TOKEN, APP_ID, ("ou_1",)))
    payload["header"]["event_type"] = CALENDAR_CHANGED
    headers, body = delivered(payload)
    # WHEN verified THEN it is accepted as a change of the user's calendar list, naming no calendar: only
    # the event type decides whether calendar_id is read
    result = outcome(ENCRYPTED, headers, body, payload)
    assert isinstance(result, ChangeNotice), result
    assert (result.calendar_id, result.open_ids) == ("", ("ou_1",))
    assert_authentic(result, payload)


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
    if isinstance(result, ChangeNotice):
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
    assert isinstance(result, ChangeNotice)
    assert result.open_ids == ("ou_1", "ou_2")


@pytest.mark.parametrize("gray", [True, False], ids=["gray-fields", "no-gray-fields"])
def test_the_event_changed_strategy_does_produce_valid_events(gray: bool) -> None:
    # GIVEN the event change the strategies start from, with and without Feishu's gray-release fields
    payload = fuzzing.calendar_event_changed(TOKEN, APP_ID, open_ids=("ou_1", "ou_2"), gray=gray)
    headers, body = delivered(payload)
    # WHEN its untouched form is verified THEN it is accepted, naming its calendar: the fuzz above
    # exercises the acceptance of event changes as well as their refusals
    result = outcome(ENCRYPTED, headers, body, payload)
    assert isinstance(result, ChangeNotice)
    assert (result.calendar_id, result.open_ids) == (fuzzing.CALENDAR_ID, ("ou_1", "ou_2"))
    assert_authentic(result, payload)


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
    # WHEN verified THEN it is accepted only if the timestamp is an integer at most SKEW old and AHEAD ahead
    result = outcome(ENCRYPTED, headers, body)
    assert isinstance(result, ChangeNotice) == _within(timestamp), (timestamp, result)


def _within(timestamp: str) -> bool:
    try:
        return -AHEAD <= NOW - int(timestamp) <= SKEW
    except ValueError:
        return False


def test_known_crashers_found_by_the_fuzz_are_4xx() -> None:
    # GIVEN the unsigned inputs the fuzz first found crashing the verifier (kept as fixed regressions)
    bodies = [
        b"[" * 50_000 + b"]" * 50_000,  # RecursionError in json.loads
        json.dumps({"type": "url_verification", "token": "\ud800", "challenge": "c"}).encode(),  # surrogate token
        json.dumps({"uuid": "u", "token": "\udfff"}).encode(),
        json.dumps(fuzzing.calendar_changed(TOKEN, APP_ID, open_ids=("ou_\ud800",))).encode(),  # surrogate open_id
        json.dumps(fuzzing.calendar_changed(TOKEN, APP_ID, delivery_id="evt\x00")).encode(),
    ]
    for body in bodies:
        # WHEN verified THEN each is refused with a 4xx
        assert isinstance(outcome(ENCRYPTED, {}, body), CallbackRejected)


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
