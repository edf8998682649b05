"""Fuzzing the real callback handler with API Gateway v2 events, on DynamoDB Local.

For every event: the answer is a 2xx or 4xx JSON reply with a reason (never a 5xx), no exception
escapes the handler, and a request that is not an accepted change (of a calendar list or of a
calendar's events) writes nothing to any table. Accepted changes start their syncs through a stand-in
Lambda API, and an accepted event change marks its calendar dirty for the known users it names; a
Lambda API that cannot be reached does not turn an accepted event into an error. Every event tried and
its answer are counted for the README's fuzz figures (``tests/fuzz_report.py``).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from feishu_mirror.callback import EVENT_CHANGED, MAX_BODY_BYTES
from feishu_mirror.config import Settings
from feishu_mirror.identifiers import is_calendar_id
from local.feishu_sim import FeishuSimulator
from tests import fuzz_report, fuzzing
from tests.integration.callback_handler import (
    UNREACHABLE,
    LambdaRecorder,
    api_event,
    callback_app,
    reply_body,
    signed_delivery,
    table_snapshot,
)
from tests.integration.harness import Harness
from tests.lambda_handlers import FakeContext

pytestmark = pytest.mark.integration

KNOWN_USERS = ("ou_fuzz_a", "ou_fuzz_b")
# An API Gateway event and the Feishu payload inside it (None when the body is not one).
Delivery = tuple[dict[str, Any], dict[str, Any] | None]
FRESH_DELIVERY_IDS = fuzzing.fresh_delivery_ids()


@pytest.fixture
def app(
    monkeypatch: pytest.MonkeyPatch,
    harness: Harness,
    sim: FeishuSimulator,
    dynamodb_endpoint: str,
    recorder: LambdaRecorder,
) -> Iterator[ModuleType]:
    """The handler on this test's tables, with two onboarded users and the recording Lambda API."""
    for open_id in KNOWN_USERS:
        harness.onboard(open_id)
    with callback_app(
        monkeypatch,
        settings=harness.settings,
        sim=sim,
        dynamodb_endpoint=dynamodb_endpoint,
        lambda_endpoint=recorder.url,
    ) as module:
        yield module


def mixed_case(headers: dict[str, str], flips: list[bool]) -> dict[str, str]:
    """Header names with some upper-cased (API Gateway lower-cases them, other fronts may not)."""
    return {
        (name.upper() if flip else name): value for (name, value), flip in zip(headers.items(), flips, strict=False)
    }


@st.composite
def signed_payloads(draw: st.DrawFn, sim: FeishuSimulator) -> tuple[str, dict[str, Any]]:
    """A Feishu payload for a signed delivery, and its shape."""
    open_ids = tuple(draw(st.lists(st.sampled_from([*KNOWN_USERS, "ou_unknown"]), min_size=1, max_size=3)))
    # "event": a calendar change or an event change with any field gone wrong; "event-changed": an event
    # change gone wrong only in its calendar_id and gray fields; "untouched": either change as Feishu
    # sends it (gray fields or not), so that accepted changes are dispatched often enough to be checked
    shape = draw(st.sampled_from(["event", "event-changed", "untouched", "challenge", "v1"]))
    # three in four events carry a delivery id (header.event_id) not sent before (they are dispatched if
    # accepted), the others a drawn one, which repeats: a redelivery, answered from the first one's record
    ids = FRESH_DELIVERY_IDS if draw(st.integers(0, 3)) else fuzzing.uuid_delivery_ids
    token, app_id = sim.verification_token, sim.app_id
    if shape == "event":
        return shape, draw(fuzzing.event_payloads(token, app_id, open_ids, ids))
    if shape == "event-changed":
        return shape, draw(fuzzing.event_changed_payloads(token, app_id, open_ids, ids))
    if shape == "untouched":
        return shape, draw(fuzzing.untouched_changes(token, app_id, open_ids, ids))
    if shape == "challenge":
        return shape, draw(fuzzing.challenge_payloads(token))
    return shape, draw(fuzzing.v1_payloads(token))


@st.composite
def api_gateway_events(draw: st.DrawFn, sim: FeishuSimulator) -> Delivery:
    """API Gateway v2 events: signed Feishu payloads gone wrong, random bytes, bad base64, missing parts."""
    # Over half of the events are signed Feishu payloads, most of them with the right key and a fresh
    # timestamp, so the checks behind the signature and the dispatch get their share.
    kind = draw(st.sampled_from(["signed"] * 6 + ["bytes", "bad-base64", "missing", "nested", "headers-only"]))
    base64_encoded = draw(st.booleans())
    if kind == "signed":
        shape, payload = draw(signed_payloads(sim))
        variant = draw(st.sampled_from(["good"] * 4 + ["other-key", "stale", "repeated-header"]))
        key = "another-encrypt-key" if variant == "other-key" else sim.encrypt_key or ""
        body = fuzzing.sealed(key, fuzzing.as_plaintext(payload))
        skew = draw(st.sampled_from([-400, 400]) if variant == "stale" else st.integers(-290, 290))
        headers = fuzzing.signed_headers(key, body, str(int(time.time()) + skew))
        if variant == "repeated-header":  # API Gateway joins a repeated header's values with a comma
            headers["x-lark-signature"] += "," + headers["x-lark-signature"]
        if shape == "challenge" and draw(st.booleans()):  # Feishu sends its challenge unsigned
            headers = {}
        headers = mixed_case(headers, draw(st.lists(st.booleans(), min_size=3, max_size=3)))
        return api_event(headers, body, base64_encoded=base64_encoded), payload
    if kind == "bytes":
        return api_event(draw(fuzzing.header_maps), draw(st.binary(max_size=256)), base64_encoded=base64_encoded), None
    if kind == "bad-base64":
        text = draw(st.text(alphabet="AB=+/-_ \n%*", min_size=1, max_size=16).filter(_not_base64))
        return api_event(draw(fuzzing.header_maps), text, base64_encoded=True), None
    if kind == "nested":
        return api_event({}, draw(fuzzing.nested_json()), base64_encoded=base64_encoded), None
    if kind == "headers-only":
        return api_event(draw(fuzzing.header_maps), None, base64_encoded=base64_encoded), None
    event = api_event(draw(st.none() | st.just({})), draw(st.none() | st.just("") | fuzzing.any_text))
    if draw(st.booleans()):
        event.pop("isBase64Encoded")
    return event, None


def _not_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return True
    return False


def _is_event_changed(payload: dict[str, Any] | None) -> bool:
    header = payload.get("header") if payload is not None else None
    return isinstance(header, dict) and header.get("event_type") == EVENT_CHANGED


def _kind(status: int, body: dict[str, Any], payload: dict[str, Any] | None) -> str:
    """The outcome of one delivery, as the fuzz figures name it."""
    if status != 200:
        return fuzz_report.status_key(status)
    if "challenge" in body:
        return fuzz_report.CHALLENGE
    if body.get("msg") == "success" and body.get("duplicate"):
        return fuzz_report.DUPLICATE
    if body.get("msg") == "success":
        return fuzz_report.EVENT_CHANGE if _is_event_changed(payload) else fuzz_report.CALENDAR_CHANGE
    return fuzz_report.IGNORED


def _count(kind: str, payload: dict[str, Any] | None) -> None:
    fuzz_report.TALLY.record(fuzz_report.HANDLER, kind, event_changed=_is_event_changed(payload))


def test_fuzzed_events_get_2xx_or_4xx_and_refusals_write_nothing(
    app: ModuleType, harness: Harness, sim: FeishuSimulator, recorder: LambdaRecorder
) -> None:
    seen: set[int | str] = set()
    # The rarest accepting paths, as Feishu sends them, are examples of their own: whether the drawn
    # inputs reach them depends on the seed, which hypothesis derives from this function's source text.
    v1 = {"uuid": "evt-v1-example", "token": sim.verification_token, "type": "event_callback", "event": {}}
    challenge = {"challenge": "c-example", "token": sim.verification_token, "type": "url_verification"}

    @fuzzing.INTEGRATION
    @example(delivery=(signed_delivery(sim, v1), v1))
    @example(delivery=(api_event({}, sim.build_callback_request(challenge)[1]), challenge))
    @given(delivery=api_gateway_events(sim))
    def check(delivery: Delivery) -> None:
        event, payload = delivery
        # GIVEN the tables as they are before the request
        before = table_snapshot(harness.client, harness.settings)
        invokes_before = len(recorder.invocations)
        # WHEN the handler gets any API Gateway event (no exception may escape it)
        try:
            reply = app.handler(event, FakeContext())
        except Exception:
            _count(fuzz_report.ESCAPED, payload)
            raise
        # THEN the answer is a 2xx or 4xx JSON reply with a reason
        status = reply["statusCode"]
        seen.add(status)
        if status >= 500:
            _count(fuzz_report.SERVER_ERROR, payload)
        assert 200 <= status < 500, reply
        assert reply["headers"]["Content-Type"] == "application/json"
        body = reply_body(reply)
        _count(_kind(status, body, payload), payload)
        seen.add(str(body.get("msg", "challenge")))
        if status != 200:
            assert isinstance(body.get("msg"), str)
            assert body["msg"]
        else:
            assert body.get("msg") in ("success", "ignored") or isinstance(body.get("challenge"), str), body
        # AND anything but an accepted change leaves every table as it was and starts no sync
        if body.get("msg") != "success":
            assert table_snapshot(harness.client, harness.settings) == before
            assert len(recorder.invocations) == invokes_before
        # AND an accepted event change names a non-empty, bounded, printable calendar_id, the payload's,
        # and (unless its delivery id was seen before: then it is answered from the first delivery's record)
        # marks that calendar dirty for every known user it names, whose sync then lists it
        elif _is_event_changed(payload) and not body.get("duplicate"):
            assert payload is not None
            seen.add("event change")
            calendar_id = payload["event"]["calendar_id"]
            assert is_calendar_id(calendar_id)
            assert calendar_id.isprintable()
            named = {user["open_id"] for user in payload["event"]["user_id_list"]}
            for open_id in sorted(named & set(KNOWN_USERS)):
                assert calendar_id in harness.user(open_id).get("dirty_calendars", set()), open_id

    check()
    # AND the fuzz (with its two examples) reached the accepting paths (a dispatched calendar change and
    # event change, an ignored event, a challenge) as well as the refusals
    assert {"success", "event change", "ignored", "challenge", 400, 401} <= seen


def test_an_accepted_event_with_an_unreachable_lambda_api_is_still_a_200(
    monkeypatch: pytest.MonkeyPatch, harness: Harness, settings: Settings, sim: FeishuSimulator, dynamodb_endpoint: str
) -> None:
    # GIVEN a known user and a Lambda API that refuses connections
    open_id = harness.onboard("ou_unreachable")
    with callback_app(
        monkeypatch, settings=settings, sim=sim, dynamodb_endpoint=dynamodb_endpoint, lambda_endpoint=UNREACHABLE
    ) as module:
        # WHEN Feishu pushes a change for them
        reply = module.handler(signed_delivery(sim, sim.calendar_changed_payload([open_id])), FakeContext())
    # THEN Feishu gets a 200 (retrying would not help), the failed invoke is reported in the answer
    assert reply["statusCode"] == 200, reply
    assert reply_body(reply) == {"msg": "success", "started": 0, "coalesced": 0, "ignored": 0, "invoke_failed": 1}
    # AND the user is marked dirty and due, so the scheduled resync starts the sync
    user = harness.user(open_id)
    assert user["dirty_seq"] == 1
    assert user["due_at"] <= int(time.time()) + 130


@pytest.mark.parametrize("base64_encoded", [False, True])
def test_an_oversized_delivery_is_a_413_and_writes_nothing(
    app: ModuleType, harness: Harness, sim: FeishuSimulator, recorder: LambdaRecorder, base64_encoded: bool
) -> None:
    # GIVEN a genuine, signed change for a known user, padded past the callback's body limit
    payload = {**sim.calendar_changed_payload([KNOWN_USERS[0]]), "padding": "x" * MAX_BODY_BYTES}
    headers, body = sim.build_callback_request(payload)
    before = table_snapshot(harness.client, harness.settings)
    # WHEN it is delivered (as text or base64, as API Gateway may pass it)
    reply = app.handler(
        api_event({k.lower(): v for k, v in headers.items()}, body, base64_encoded=base64_encoded), FakeContext()
    )
    # THEN it is refused as too large, and nothing was written or started
    assert (reply["statusCode"], reply_body(reply)) == (413, {"msg": "body too large"})
    assert table_snapshot(harness.client, harness.settings) == before
    assert recorder.invocations == []


@pytest.mark.parametrize("body", ["\ud800", '{"encrypt": "\udfff"}', "\udcff" * 3])
def test_a_body_with_lone_surrogates_is_a_4xx_not_a_crash(app: ModuleType, body: str) -> None:
    # GIVEN an event whose text body holds lone surrogates (a JSON "\ud800" escape in the Lambda event),
    # the first crash the fuzz found in the handler
    # WHEN it is handled THEN it is refused with a 400 and a reason, no exception escapes
    reply = app.handler(api_event({}, body), FakeContext())
    assert reply["statusCode"] == 400
    assert reply_body(reply)["msg"]
