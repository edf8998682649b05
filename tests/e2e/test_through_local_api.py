"""End to end: the template's functions under the Lambda emulator, driven through the local HTTP front,
talking to the Feishu simulator and DynamoDB Local."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from feishu_mirror.dynamodb.values import attribute_values, plain
from feishu_mirror.models import CALENDAR_FIELDS
from local.feishu_sim import FeishuSimulator
from local.run import WARM_EVENTS
from local.stack import ROOT, LocalStack
from tests.e2e.conftest import assert_no_plaintext_token

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sim() -> Iterator[FeishuSimulator]:
    with FeishuSimulator(app_id="cli_e2e", push_retry_delays=(0.5, 1.0)) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def stack(sim: FeishuSimulator, aws_calls: Path) -> Iterator[LocalStack]:
    with LocalStack(sim.app_environment(), prefix="e2e-", record_calls=aws_calls) as running:
        running.warm(WARM_EVENTS)
        sim.set_callback_url(f"{running.api_url}/feishu/events", auto_push=False)
        yield running


def events_url(stack: LocalStack) -> str:
    return f"{stack.api_url}/feishu/events"


def mirror(stack: LocalStack, open_id: str) -> dict[str, dict[str, Any]]:
    """Live calendar items of the user, Feishu fields only."""
    items = stack.client().query(
        TableName=stack.template.table_names["CalendarsTable"],
        KeyConditionExpression="open_id = :o",
        ExpressionAttributeValues=attribute_values({":o": open_id}),
        ConsistentRead=True,
    )["Items"]
    return {
        i["calendar_id"]: {k: v for k, v in i.items() if k in CALENDAR_FIELDS}
        for i in map(plain, items)
        if "deleted_at" not in i
    }


def truth(sim: FeishuSimulator, open_id: str) -> dict[str, dict[str, Any]]:
    return {c["calendar_id"]: {k: v for k, v in c.items() if k in CALENDAR_FIELDS} for c in sim.calendars(open_id)}


def user(stack: LocalStack, open_id: str) -> dict[str, Any]:
    item = stack.client().get_item(TableName=stack.template.table_names["UsersTable"], Key={"open_id": {"S": open_id}})
    return plain(item.get("Item", {}))


def onboard(stack: LocalStack, sim: FeishuSimulator, open_id: str, calendars: int = 2) -> None:
    sim.add_user(open_id, f"User {open_id}")
    for n in range(calendars):
        sim.create_calendar(open_id, summary=f"{open_id} calendar {n}", color=n)
    sim.set_consent_user(open_id)
    page = requests.get(f"{stack.api_url}/oauth/start", timeout=30)
    assert page.status_code == 200, page.text
    assert stack.wait_idle(60)


def test_the_url_verification_challenge_is_answered_quickly(stack: LocalStack, sim: FeishuSimulator) -> None:
    started = time.monotonic()
    reply = sim.push_url_verification("e2e-challenge", callback_url=events_url(stack))
    assert (reply.status_code, reply.json()) == (200, {"challenge": "e2e-challenge"})
    assert time.monotonic() - started < 1.0


def test_onboarding_then_pushed_changes_keep_the_mirror_equal_to_feishu(
    stack: LocalStack, sim: FeishuSimulator
) -> None:
    # GIVEN a user who signs in through the real OAuth redirects
    onboard(stack, sim, "ou_e2e_main", calendars=3)
    assert mirror(stack, "ou_e2e_main") == truth(sim, "ou_e2e_main")
    assert user(stack, "ou_e2e_main")["subscribed_at"] > 0
    # WHEN calendars change and Feishu pushes a signed, encrypted event
    ids = list(truth(sim, "ou_e2e_main"))
    sim.create_calendar("ou_e2e_main", summary="added")
    sim.update_calendar("ou_e2e_main", ids[1], summary="renamed")
    sim.delete_calendar("ou_e2e_main", ids[2])
    reply = sim.push_calendar_changed(["ou_e2e_main"])
    # THEN the callback acknowledges it and the mirror follows
    assert reply.status_code == 200
    assert reply.json()["started"] == 1
    assert stack.wait_idle(60)
    assert mirror(stack, "ou_e2e_main") == truth(sim, "ou_e2e_main")
    assert stack.failures == []


def test_a_redelivered_event_starts_no_second_sync(stack: LocalStack, sim: FeishuSimulator) -> None:
    onboard(stack, sim, "ou_e2e_dup")
    headers, body = sim.build_callback_request(sim.calendar_changed_payload(["ou_e2e_dup"], delivery_id="evt-dup-1"))
    first = requests.post(events_url(stack), data=body, headers=headers, timeout=10)
    second = requests.post(events_url(stack), data=body, headers=headers, timeout=10)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["duplicate"] is True
    assert stack.wait_idle(60)
    assert user(stack, "ou_e2e_dup")["dirty_seq"] == 2  # onboarding + the first delivery only


def test_header_case_and_base64_bodies_do_not_break_the_signature(stack: LocalStack, sim: FeishuSimulator) -> None:
    onboard(stack, sim, "ou_e2e_b64")
    headers, body = sim.build_callback_request(sim.calendar_changed_payload(["ou_e2e_b64"]))
    shouting = {name.upper(): value for name, value in headers.items()}
    shouting["Content-Type"] = "application/octet-stream"  # API Gateway base64-encodes such bodies
    reply = requests.post(events_url(stack), data=body, headers=shouting, timeout=10)
    assert reply.status_code == 200, reply.text
    assert stack.wait_idle(60)


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"not json", {}, 400, "not valid JSON"),
        (b'{"encrypt": "!!!"}', {}, 400, "could not be decrypted"),
        (b'{"challenge": "x", "type": "url_verification", "token": "t"}', {}, 400, "must be encrypted"),
        (b"{" + b" " * 200_000 + b"}", {}, 413, "too large"),
        (b"", {}, 400, "empty body"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_reason(
    stack: LocalStack, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    reply = requests.post(events_url(stack), data=body, headers=headers, timeout=10)
    assert reply.status_code == status
    assert reason in reply.json()["msg"]
    assert "Traceback" not in reply.text


def test_forged_signatures_and_stale_timestamps_are_refused(stack: LocalStack, sim: FeishuSimulator) -> None:
    payload = sim.calendar_changed_payload(["ou_nobody"])
    headers, body = sim.build_callback_request(payload)
    forged = {**headers, "X-Lark-Signature": "0" * 64}
    assert requests.post(events_url(stack), data=body, headers=forged, timeout=10).status_code == 401
    # older than the window (8 h: Feishu's retries may carry their first timestamp for ~7.1 h), or ahead of it
    for timestamp in (int(time.time()) - 9 * 3600, int(time.time()) + 3600):
        stale_headers, stale_body = sim.build_callback_request(payload, timestamp=timestamp)
        stale = requests.post(events_url(stack), data=stale_body, headers=stale_headers, timeout=10)
        assert (stale.status_code, stale.json()["msg"]) == (401, "stale timestamp")


def test_oauth_start_redirects_to_feishu_with_pkce_and_our_callback(stack: LocalStack, sim: FeishuSimulator) -> None:
    reply = requests.get(f"{stack.api_url}/oauth/start", allow_redirects=False, timeout=10)
    assert reply.status_code == 302
    location = urlsplit(reply.headers["Location"])
    query = parse_qs(location.query)
    assert f"{location.scheme}://{location.netloc}" == sim.url
    assert query["redirect_uri"] == [f"{stack.api_url}/oauth/callback"]
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["state"][0]) >= 32


@pytest.mark.parametrize(
    ("query", "status"),
    [("", 400), ("code=x&state=never-issued", 400), ("error=access_denied&state=never-issued", 400)],
)
def test_bad_oauth_callbacks_get_a_clear_4xx_page(stack: LocalStack, query: str, status: int) -> None:
    reply = requests.get(f"{stack.api_url}/oauth/callback?{query}", timeout=10)
    assert reply.status_code == status
    assert reply.headers["Content-Type"].startswith("text/html")
    assert "Please start again" in reply.text


def test_declined_consent_is_a_403_page(stack: LocalStack, sim: FeishuSimulator) -> None:
    sim.add_user("ou_e2e_declines", "Declines")
    sim.set_consent_user("ou_e2e_declines", deny=True)
    reply = requests.get(f"{stack.api_url}/oauth/start", timeout=10)
    assert reply.status_code == 403
    assert "not granted" in reply.text


def test_unknown_routes_are_404(stack: LocalStack) -> None:
    assert requests.get(f"{stack.api_url}/nowhere", timeout=10).status_code == 404
    assert requests.get(f"{stack.api_url}/feishu/events", timeout=10).status_code == 404


def test_the_schedule_catches_a_change_whose_push_was_lost(stack: LocalStack, sim: FeishuSimulator) -> None:
    # GIVEN a synced user whose next change is never pushed, and who is due for a resync
    onboard(stack, sim, "ou_e2e_lost")
    sim.create_calendar("ou_e2e_lost", summary="never pushed")
    stack.client().update_item(
        TableName=stack.template.table_names["UsersTable"],
        Key={"open_id": {"S": "ou_e2e_lost"}},
        UpdateExpression="SET due_at = :past",
        ExpressionAttributeValues={":past": {"N": "1"}},
    )
    # WHEN the schedule fires THEN the resync starts the sync and the mirror catches up
    stack.run_schedule("ResyncFunction")
    assert stack.wait_idle(60)
    assert mirror(stack, "ou_e2e_lost") == truth(sim, "ou_e2e_lost")


def test_the_sync_function_refuses_malformed_invocations_without_retries(stack: LocalStack) -> None:
    result = stack.invoke("SyncFunction", {"open_id": 42})
    assert result.error is None
    assert result.payload["outcome"] == "invalid_request"


def test_a_failure_destination_record_can_be_replayed(stack: LocalStack, sim: FeishuSimulator) -> None:
    onboard(stack, sim, "ou_e2e_replay")
    sim.create_calendar("ou_e2e_replay", summary="replayed")
    record = {"requestContext": {"condition": "RetriesExhausted"}, "requestPayload": {"open_id": "ou_e2e_replay"}}
    result = stack.invoke("SyncFunction", record)
    assert result.payload["outcome"] == "synced"
    assert mirror(stack, "ou_e2e_replay") == truth(sim, "ou_e2e_replay")


def test_no_secret_reaches_the_function_logs(stack: LocalStack, sim: FeishuSimulator) -> None:
    # GIVEN every secret of this run: the app's credentials and every user's tokens
    onboard(stack, sim, "ou_e2e_secrets")
    stack.wait_idle(60)
    secrets = [sim.app_secret, sim.encrypt_key or "", sim.verification_token, *sim.issued_user_tokens()]
    # WHEN the functions' logs are searched THEN none of them appears, plain or base64-encoded
    logs = "".join(path.read_text(errors="replace") for path in (stack.state / "logs").glob("*.log"))
    assert "ou_e2e_secrets" in logs
    for secret in filter(None, secrets):
        assert secret not in logs
        assert base64.b64encode(secret.encode()).decode() not in logs


def test_make_demo_passes() -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'layers' / 'shared'}"}
    env.pop("LOCAL_API_PORT", None)
    done = subprocess.run(
        [sys.executable, "-m", "local.run", "--demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "DEMO PASSED" in done.stdout
    assert "✗" not in done.stdout


def test_a_crashing_sync_is_retried_then_lands_in_the_failure_destination_and_replays(
    stack: LocalStack, sim: FeishuSimulator
) -> None:
    # GIVEN a user whose record is corrupt, so the sync function raises (a bug, not a Feishu failure)
    onboard(stack, sim, "ou_e2e_crash")
    users_table = stack.template.table_names["UsersTable"]
    stack.client().update_item(
        TableName=users_table,
        Key={"open_id": {"S": "ou_e2e_crash"}},
        UpdateExpression="SET access_expires_at = :bad",
        ExpressionAttributeValues={":bad": {"S": "not a number"}},
    )
    before = len(stack.failures)
    # WHEN its sync is invoked asynchronously
    assert stack.lambda_api is not None
    stack.lambda_api.invoke_async("SyncFunction", {"open_id": "ou_e2e_crash", "reason": "test"})
    assert stack.wait_idle(60)
    # THEN Lambda's retries ran out and the on-failure record holds the request, with the lease released
    assert len(stack.failures) == before + 1
    record = stack.failures[-1]
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestPayload"]["open_id"] == "ou_e2e_crash"
    assert "lease_owner" not in user(stack, "ou_e2e_crash")
    # WHEN the record is fixed at its cause and replayed as it is THEN the sync succeeds
    stack.client().update_item(
        TableName=users_table,
        Key={"open_id": {"S": "ou_e2e_crash"}},
        UpdateExpression="SET access_expires_at = :zero",
        ExpressionAttributeValues={":zero": {"N": "0"}},
    )
    sim.create_calendar("ou_e2e_crash", summary="after the crash")
    assert stack.invoke("SyncFunction", record).payload["outcome"] == "synced"
    assert mirror(stack, "ou_e2e_crash") == truth(sim, "ou_e2e_crash")


def test_no_table_item_holds_a_token_in_plaintext(stack: LocalStack, sim: FeishuSimulator) -> None:
    # GIVEN everything this module did through the local stack (onboarding, syncs, refreshes, pushes)
    # WHEN every table is scanned THEN no item holds a token Feishu issued, as text or inside binary
    assert assert_no_plaintext_token(stack, sim.issued_user_tokens()) > 0
