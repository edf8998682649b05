"""Replay and spoofing through the real callback handler, on DynamoDB Local: a replayed delivery does its
work once, a stale one none, and the challenge path never dispatches anything."""

from __future__ import annotations

import json
import time
from types import ModuleType

import pytest

from local.feishu_sim import FeishuSimulator
from tests import fuzzing
from tests.integration.callback_handler import (
    LambdaRecorder,
    api_event,
    reply_body,
    signed_delivery,
    table_snapshot,
)
from tests.integration.harness import Harness
from tests.lambda_handlers import FakeContext

pytestmark = pytest.mark.integration

MAX_SKEW = 60


@pytest.fixture
def callback_env() -> dict[str, str]:
    """The handler's timestamp window, one minute each way (CALLBACK_MAX_SKEW_SECONDS, CALLBACK_MAX_AHEAD_SECONDS)."""
    return {"CALLBACK_MAX_SKEW_SECONDS": str(MAX_SKEW), "CALLBACK_MAX_AHEAD_SECONDS": str(MAX_SKEW)}


def test_a_replayed_delivery_within_the_window_starts_one_sync(
    app: ModuleType, harness: Harness, sim: FeishuSimulator, recorder: LambdaRecorder
) -> None:
    # GIVEN a user and one genuine, signed delivery of a change to their calendars
    open_id = harness.onboard("ou_replayed")
    payload = sim.calendar_changed_payload([open_id], delivery_id="evt-replayed")
    delivery = signed_delivery(sim, payload)
    # WHEN the identical request (same body, same signature) arrives twice within the window
    first = app.handler(delivery, FakeContext())
    replay = app.handler(json.loads(json.dumps(delivery)), FakeContext())
    # AND Feishu's own retry of the event arrives, freshly signed with a new timestamp and nonce
    retry = app.handler(signed_delivery(sim, payload, nonce="another-nonce"), FakeContext())
    # THEN all three get a 200, the later two marked as duplicates
    assert [r["statusCode"] for r in (first, replay, retry)] == [200, 200, 200]
    assert reply_body(first)["started"] == 1
    assert "duplicate" not in reply_body(first)
    assert reply_body(replay)["duplicate"] is True
    assert reply_body(retry)["duplicate"] is True
    # AND the work was done once: one dirty_seq bump, one asynchronous invoke, one idempotency record
    assert harness.user(open_id)["dirty_seq"] == 1
    assert recorder.invocations == [
        (
            "/2015-03-31/functions/sync/invocations",
            "Event",
            {"open_id": open_id, "reason": "calendar_changed", "delivery_id": "evt-replayed"},
        )
    ]
    assert len(harness.client.scan(TableName=harness.settings.idempotency_table)["Items"]) == 1


def test_a_delivery_outside_the_configured_window_writes_nothing(
    app: ModuleType, harness: Harness, sim: FeishuSimulator, recorder: LambdaRecorder
) -> None:
    # GIVEN a user and the tables as they are
    open_id = harness.onboard("ou_stale")
    before = table_snapshot(harness.client, harness.settings)
    now = int(time.time())
    for timestamp in (now - MAX_SKEW - 5, now + MAX_SKEW + 5):
        # WHEN a genuine delivery signed just outside CALLBACK_MAX_SKEW_SECONDS arrives (a replay, or a
        # clock that runs ahead)
        payload = sim.calendar_changed_payload([open_id])
        reply = app.handler(signed_delivery(sim, payload, timestamp=timestamp), FakeContext())
        # THEN it is refused as stale, and nothing was written or started
        assert (reply["statusCode"], reply_body(reply)) == (401, {"msg": "stale timestamp"})
    assert table_snapshot(harness.client, harness.settings) == before
    assert recorder.invocations == []
    # AND inside the window the same kind of delivery is accepted (the refusal was the window's)
    inside = app.handler(
        signed_delivery(sim, sim.calendar_changed_payload([open_id]), timestamp=now - MAX_SKEW + 5), FakeContext()
    )
    assert reply_body(inside)["msg"] == "success"
    assert len(recorder.invocations) == 1


def test_the_challenge_path_never_dispatches(
    app: ModuleType, harness: Harness, sim: FeishuSimulator, recorder: LambdaRecorder
) -> None:
    # GIVEN a user, the tables as they are, and the app's encrypt key configured
    open_id = harness.onboard("ou_disguised")
    key = sim.encrypt_key or ""
    assert key
    before = table_snapshot(harness.client, harness.settings)
    # WHEN a calendar change disguised as url_verification arrives encrypted but unsigned
    disguised = {
        **sim.calendar_changed_payload([open_id]),
        "type": "url_verification",
        "challenge": "c-disguised",
        "token": sim.verification_token,
    }
    body = fuzzing.sealed(key, fuzzing.as_plaintext(disguised))
    reply = app.handler(api_event({}, body), FakeContext())
    # THEN it is answered as a challenge only
    assert (reply["statusCode"], reply_body(reply)) == (200, {"challenge": "c-disguised"})
    # WHEN a plaintext challenge, or an encrypted one with the wrong token, arrives
    plaintext = json.dumps({"type": "url_verification", "challenge": "c", "token": sim.verification_token})
    wrong_token = fuzzing.sealed(
        key, fuzzing.as_plaintext({"type": "url_verification", "challenge": "c", "token": "x"})
    )
    refused = [
        app.handler(api_event({}, plaintext), FakeContext()),
        app.handler(api_event({}, wrong_token), FakeContext()),
    ]
    # THEN both are refused with a reason
    assert [(r["statusCode"], reply_body(r)["msg"]) for r in refused] == [
        (400, "body must be encrypted"),
        (401, "verification token mismatch"),
    ]
    # AND none of the three wrote anything or started a sync
    assert table_snapshot(harness.client, harness.settings) == before
    assert recorder.invocations == []
    assert harness.user(open_id)["dirty_seq"] == 0
