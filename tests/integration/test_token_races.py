"""Tokens against everything Feishu and AWS can do to them: refusals, missing scopes, refreshes whose
answer is lost, DynamoDB hiccups while a new pair is stored, two copies of one invocation, and a user
who signs in again while a sync runs. Real stores on DynamoDB Local, a real client on the simulator."""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from feishu_mirror.dynamodb.user_tokens import UserTokens
from feishu_mirror.dynamodb.users import UsersTable
from feishu_mirror.models import SyncResult, TokenGrant
from feishu_mirror.sync import lease_owner
from local.feishu_sim import (
    CALENDAR_SCOPES,
    CALENDARS_PATH,
    OAUTH_TOKEN_PATH,
    Fault,
    FeishuSimulator,
    delay,
    feishu_error,
    gateway_timeout,
    http_error,
    late_reply,
    lost_reply,
    unrotated_refresh,
)
from tests.integration.harness import Harness

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

pytestmark = pytest.mark.integration

READ_TIMEOUT = 0.5
LATER = 3 * 3600  # past any failure backoff and lease: the next scheduled attempt


def later(harness: Harness, open_id: str) -> SyncResult:
    """The next attempt, hours later, as the scheduled resync starts it."""
    return harness.sync(open_id, clock_offset=LATER)


# ------------------------------------------------------------------ refusals and missing scopes


@pytest.mark.parametrize("code", [20026, 20037, 20064, 20073, 20074, 20002, 20063, 20024])
def test_every_refresh_refusal_but_20050_and_5xx_asks_the_user_to_authorise_again_at_once(
    harness: Harness, sim: FeishuSimulator, code: int
) -> None:
    # GIVEN a user whose access token expired, and the token endpoint refusing the refresh with ``code``
    open_id = harness.onboard(f"ou_refused_{code}")
    sim.expire_access_tokens(open_id)
    sim.inject(OAUTH_TOKEN_PATH, feishu_error(code, 400, "refused"))
    # WHEN the user is synced
    result = harness.sync(open_id)
    # THEN after one refresh request the user must authorise again, with the cause recorded: no retry loop
    assert (result.outcome, result.error_code) == ("reauth_required", code)
    assert harness.token_requests() == 1
    user = harness.user(open_id)
    assert (user["status"], user["reauth_cause"], user["last_error_code"]) == (
        "reauth_required",
        "refresh_token_refused",
        code,
    )
    assert "refresh_started_version" not in user


@pytest.mark.parametrize(
    "failure", [feishu_error(20050, 500), feishu_error(20072, 503), http_error(503), http_error(500, code=1500)]
)
def test_a_refresh_feishu_answers_20050_or_5xx_is_retried(
    harness: Harness, sim: FeishuSimulator, failure: Fault
) -> None:
    # GIVEN an expired access token and the token service answering 20050 / 5xx twice
    open_id = harness.onboard("ou_retried_refresh")
    sim.expire_access_tokens(open_id)
    sim.inject(OAUTH_TOKEN_PATH, failure, failure)
    # WHEN the user is synced THEN the refresh is retried with the same token and succeeds
    assert harness.sync(open_id).outcome == "synced"
    assert harness.token_requests() == 3
    assert len(sim.used_refresh_tokens()) == 1
    assert sim.refresh_token_reuse_count == 0
    harness.assert_mirror_matches(open_id)


def test_a_missing_scope_names_the_scope_and_a_new_consent_restores_the_user(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a user whose grant lost the calendar scope (Feishu answers 99991679 with permission_violations)
    open_id = harness.onboard("ou_scope", extra_calendars=1)
    assert harness.sync(open_id).outcome == "synced"
    sim.withdraw_scope(open_id, "calendar:calendar:readonly")
    sim.create_calendar(open_id, summary="unseen")
    # WHEN the user is synced
    result = harness.sync(open_id)
    # THEN they must authorise again, and their health names the scope (any of Feishu's candidates)
    assert (result.outcome, result.error_code) == ("reauth_required", 99991679)
    health = harness.health.get_health(open_id)
    assert health is not None
    assert (health["status"], health["reauth_cause"]) == ("reauth_required", "scope_missing")
    assert health["missing_scope"] == " or ".join(CALENDAR_SCOPES)
    # AND no sync retries meanwhile (the user left the due index)
    assert open_id not in harness.schedule.due_users(int(time.time()) + 10**9, 100)
    # WHEN the user consents again with the scope THEN they sync, and the cause is gone from their health
    harness.consent_again(open_id)
    assert harness.sync(open_id).outcome == "synced"
    user = harness.user(open_id)
    assert user["status"] == "active"
    assert "missing_scope" not in user
    assert "reauth_cause" not in user
    harness.assert_mirror_matches(open_id)


def test_a_refresh_answer_without_a_refresh_token_keeps_the_stored_one(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN an expired access token and Feishu answering the refresh with a new access token only
    open_id = harness.onboard("ou_unrotated")
    before = harness.user(open_id)
    sim.expire_access_tokens(open_id)
    sim.inject(OAUTH_TOKEN_PATH, unrotated_refresh())
    # WHEN the user is synced THEN the new access token is stored and the refresh token kept, with its expiry
    assert harness.sync(open_id).outcome == "synced"
    user = harness.user(open_id)
    assert user["access_token"] != before["access_token"]
    assert (user["refresh_token"], user["refresh_expires_at"]) == (
        before["refresh_token"],
        before["refresh_expires_at"],
    )
    stored = user["refresh_token"]
    # AND the kept refresh token serves the next refresh
    sim.expire_access_tokens(open_id)
    assert harness.sync(open_id).outcome == "synced"
    assert harness.user(open_id)["refresh_token"] != stored
    assert sim.refresh_token_reuse_count == 0


# ------------------------------------------------------------------ refreshes whose outcome is unknown


@pytest.mark.parametrize(
    "lost",
    [lost_reply(), late_reply(READ_TIMEOUT + 0.3), gateway_timeout()],
    ids=["connection-closed", "read-timeout", "gateway-504"],
)
def test_a_refresh_whose_answer_is_lost_is_never_sent_again(
    harness: Harness, sim: FeishuSimulator, lost: Fault
) -> None:
    # GIVEN an expired access token, and Feishu processing the refresh (spending the refresh token) but
    # its answer never reaching the sync
    open_id = harness.onboard("ou_lost_reply")
    sim.expire_access_tokens(open_id)
    sim.inject(OAUTH_TOKEN_PATH, lost)
    # WHEN the user is synced THEN this attempt fails without presenting the refresh token again
    engine = harness.engine(app=harness.app(read_timeout=READ_TIMEOUT))
    first = engine.sync_user(open_id, owner=lease_owner("r1"), deadline=time.monotonic() + 60, lease_seconds=90)
    assert first.outcome == "failed"
    assert harness.token_requests() == 1
    user = harness.user(open_id)
    assert user["status"] == "active"
    assert user["refresh_started_version"] == user["token_version"]
    time.sleep(READ_TIMEOUT)  # the late answer's thread finishes
    # WHEN the next attempt comes THEN it asks the user to authorise again instead of sending the
    # (spent) refresh token: it was presented once in all
    result = later(harness, open_id)
    assert result.outcome == "reauth_required"
    assert harness.user(open_id)["reauth_cause"] == "refresh_outcome_unknown"
    assert harness.token_requests() == 1
    assert sim.refresh_token_reuse_count == 0


def test_after_a_lost_refresh_answer_a_new_consent_is_used(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN a refresh whose answer was lost, then the user signing in again before the next attempt
    open_id = harness.onboard("ou_lost_then_consent", extra_calendars=2)
    sim.expire_access_tokens(open_id)
    sim.inject(OAUTH_TOKEN_PATH, lost_reply())
    assert harness.sync(open_id).outcome == "failed"
    consent = harness.consent_again(open_id)
    # WHEN the next attempt comes THEN it syncs with the new consent's tokens (refreshed by now)
    assert later(harness, open_id).outcome == "synced"
    user = harness.user(open_id)
    _, refresh_token = harness.tokens(open_id)
    assert sim.grant_of(refresh_token) == sim.grant_of(consent["refresh_token"]) == sim.latest_grant(open_id)
    assert user["status"] == "active"
    assert sim.refresh_token_reuse_count == 0
    harness.assert_mirror_matches(open_id)


def test_a_newer_pair_stored_while_the_refresh_answer_was_lost_is_taken_up(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a refresh whose answer comes too late, and the user signing in again while it is in flight
    open_id = harness.onboard("ou_consent_during_lost_reply", extra_calendars=1)
    sim.expire_access_tokens(open_id)
    sim.inject(OAUTH_TOKEN_PATH, late_reply(READ_TIMEOUT + 0.3))
    consent: dict[str, Any] = {}
    invocation = harness.services_for(app=harness.app(read_timeout=READ_TIMEOUT))
    client = invocation.feishu
    refresh = client.refresh_access_token

    def refresh_while_the_user_consents(refresh_token: str, *, deadline: float) -> TokenGrant:
        threading.Timer(0.1, lambda: consent.update(harness.consent_again(open_id))).start()
        return refresh(refresh_token, deadline=deadline)

    client.refresh_access_token = refresh_while_the_user_consents  # type: ignore[method-assign]
    # WHEN the user is synced THEN re-reading the user after the lost answer finds the newer pair, and
    # the sync goes on with it
    result = invocation.sync.sync_user(
        open_id, owner=lease_owner("r1"), deadline=time.monotonic() + 60, lease_seconds=90
    )
    assert result.outcome == "synced"
    user = harness.user(open_id)
    assert (user["status"], harness.tokens(open_id)[0]) == ("active", consent["access_token"])
    assert "refresh_started_version" not in user
    assert sim.refresh_token_reuse_count == 0
    harness.assert_mirror_matches(open_id)


class Killed(BaseException):
    """The invocation died here (a Lambda timeout): nothing after it runs."""


def test_a_refresh_cut_short_by_the_end_of_its_invocation_is_not_sent_again(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN an invocation that dies after Feishu answered its refresh, before the new pair was stored
    open_id = harness.onboard("ou_killed_mid_refresh")
    sim.expire_access_tokens(open_id)
    tokens = UserTokens(UsersTable(harness.client, harness.settings.users_table))

    def die(*_args: Any, **_kwargs: Any) -> int:
        raise Killed

    tokens.save_tokens = die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        harness.engine(tokens=tokens).sync_user(
            open_id, owner=lease_owner("r1"), deadline=time.monotonic() + 60, lease_seconds=90
        )
    # WHEN the next attempt comes, once the dead invocation's lease has expired
    result = later(harness, open_id)
    # THEN the spent refresh token is not presented again: the user is asked to authorise again
    assert (result.outcome, harness.user(open_id)["reauth_cause"]) == ("reauth_required", "refresh_outcome_unknown")
    assert harness.token_requests() == 1
    assert sim.refresh_token_reuse_count == 0


def test_no_refresh_starts_without_time_to_store_its_answer(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN an expired access token and an invocation with 20 s left
    open_id = harness.onboard("ou_late_in_the_invocation")
    sim.expire_access_tokens(open_id)
    # WHEN it syncs the user THEN it stops before the refresh, leaving the user due, the token unsent
    result = harness.engine().sync_user(
        open_id, owner=lease_owner("r1"), deadline=time.monotonic() + 20, lease_seconds=90
    )
    assert result.outcome == "interrupted"
    assert harness.token_requests() == 0
    user = harness.user(open_id)
    assert user["due_at"] <= time.time()
    assert "refresh_started_version" not in user
    # AND the next attempt refreshes
    assert harness.sync(open_id).outcome == "synced"


# ------------------------------------------------------------------ storing a new pair


class Flaky:
    """A DynamoDB client whose writes of a new token pair fail the first times (throttled, unreachable,
    or applied with the answer lost); everything else goes through."""

    def __init__(self, client: DynamoDBClient, failures: list[str]) -> None:
        self._client = client
        self.failures = failures
        self.token_writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def update_item(self, **request: Any) -> Any:
        if "refresh_token = :rt" not in request.get("UpdateExpression", "") or not self.failures:
            return self._client.update_item(**request)
        self.token_writes += 1
        failure = self.failures.pop(0)
        if failure == "throttled":
            error = {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}
            raise ClientError(error, "UpdateItem")  # type: ignore[arg-type]
        if failure == "unreachable":
            raise EndpointConnectionError(endpoint_url="http://dynamodb")
        answer = self._client.update_item(**request)  # applied, but the answer is lost
        del answer
        raise ReadTimeoutError(endpoint_url="http://dynamodb")


def test_a_new_token_pair_is_stored_through_dynamodb_hiccups(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN an expired access token, and DynamoDB throttling, unreachable, then applying the write of the
    # new pair but losing its answer
    open_id = harness.onboard("ou_flaky_store", extra_calendars=1)
    old = harness.user(open_id)
    sim.expire_access_tokens(open_id)
    flaky = Flaky(harness.client, ["throttled", "unreachable", "throttled", "applied"])
    tokens = UserTokens(UsersTable(flaky, harness.settings.users_table, sleep=lambda _s: None))  # type: ignore[arg-type]
    # WHEN the user is synced
    result = harness.engine(tokens=tokens).sync_user(
        open_id, owner=lease_owner("r1"), deadline=time.monotonic() + 60, lease_seconds=90
    )
    # THEN the new pair is stored once (the retry finds its own write) and the sync goes on with it
    assert result.outcome == "synced"
    assert flaky.token_writes == 4
    user = harness.user(open_id)
    assert user["refresh_token"] != old["refresh_token"]
    assert user["token_version"] == old["token_version"] + 1
    assert sim.grant_of(harness.tokens(open_id)[1]) == sim.latest_grant(open_id)
    assert sim.refresh_token_reuse_count == 0
    # AND the stored pair works for the next refresh
    sim.expire_access_tokens(open_id)
    assert harness.sync(open_id).outcome == "synced"
    assert sim.refresh_token_reuse_count == 0


# ------------------------------------------------------------------ races of the platform


def test_two_copies_of_one_invocation_never_both_hold_the_lease(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN one asynchronous sync event that Lambda runs twice at once, with one request id, and an
    # expired access token (so whoever syncs refreshes it)
    open_id = harness.onboard("ou_twins", extra_calendars=2)
    sim.expire_access_tokens(open_id)
    sim.inject(CALENDARS_PATH, delay(0.5))  # the first copy is still listing when the second starts
    results: list[SyncResult] = []

    def copy() -> None:
        engine = harness.engine()
        results.append(
            engine.sync_user(open_id, owner=lease_owner("request-1"), deadline=time.monotonic() + 60, lease_seconds=90)
        )

    first = threading.Thread(target=copy)
    first.start()
    time.sleep(0.2)
    copy()
    first.join(30)
    # THEN one copy synced and the other found the lease held
    assert sorted(r.outcome for r in results) == ["busy", "synced"]
    assert sim.refresh_token_reuse_count == 0
    harness.assert_mirror_matches(open_id)


def test_the_same_owner_cannot_take_a_held_lease(harness: Harness) -> None:
    open_id = harness.onboard("ou_same_owner")
    now = int(time.time())
    assert harness.schedule.acquire_lease(open_id, "owner-1", now, now + 60) is not None
    assert harness.schedule.acquire_lease(open_id, "owner-1", now, now + 60) is None


@pytest.mark.parametrize("revoke_previous", [False, True], ids=["old-tokens-kept", "old-tokens-revoked"])
def test_a_user_who_signs_in_again_during_a_sync_keeps_the_new_consent(
    harness: Harness, sim: FeishuSimulator, revoke_previous: bool
) -> None:
    # GIVEN a sync that must refresh, and the user signing in again while it does: just before its
    # refresh reaches Feishu (which may revoke the old refresh tokens), or — when not revoked — after
    # Feishu answered it and before the sync stores the answer
    open_id = harness.onboard(f"ou_second_consent_{revoke_previous}", extra_calendars=2)
    sim.expire_access_tokens(open_id)
    invocation = harness.services_for()
    client = invocation.feishu
    refresh = client.refresh_access_token
    consent: dict[str, Any] = {}

    def refresh_around_a_new_consent(refresh_token: str, *, deadline: float) -> TokenGrant:
        if revoke_previous:
            consent.update(harness.consent_again(open_id, revoke_previous=True))
            return refresh(refresh_token, deadline=deadline)  # 20064: the old refresh token was revoked
        grant = refresh(refresh_token, deadline=deadline)
        consent.update(harness.consent_again(open_id))
        return grant

    client.refresh_access_token = refresh_around_a_new_consent  # type: ignore[method-assign]
    # WHEN the sync runs
    result = invocation.sync.sync_user(
        open_id, owner=str(uuid.uuid4()), deadline=time.monotonic() + 60, lease_seconds=90
    )
    # THEN the new consent stands: the old sync neither stored its pair nor marked the user, and went on
    # with the new tokens
    assert result.outcome == "synced"
    user = harness.user(open_id)
    assert user["status"] == "active"
    assert harness.tokens(open_id) == (consent["access_token"], consent["refresh_token"])
    assert sim.grant_of(consent["refresh_token"]) == sim.latest_grant(open_id)
    assert sim.refresh_token_reuse_count == 0
    harness.assert_mirror_matches(open_id)
