"""Users' tokens on DynamoDB Local and the local KMS: the table holds ciphertext only, a sync costs one
KMS call, a ciphertext moved to another user does not open, KMS failures are recorded and retried
without losing a token, and plaintext items from before encryption are sealed by their next sync."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.config import Config

from feishu_mirror.dynamodb.values import plain
from feishu_mirror.errors import TokenVaultUnavailable
from feishu_mirror.token_vault import DataKeys, KmsDataKeys
from local.dynamodb_local import free_port
from local.feishu_sim import FeishuSimulator
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration


@contextmanager
def kms_calls(harness: Harness) -> Iterator[list[str]]:
    """The KMS operations the harness's client makes inside the block."""
    calls: list[str] = []

    def record(model: Any, **_kwargs: Any) -> None:
        calls.append(model.name)

    harness.kms.meta.events.register("after-call.kms", record)
    try:
        yield calls
    finally:
        harness.kms.meta.events.unregister("after-call.kms", record)


def raw_items(harness: Harness, table: str) -> list[dict[str, Any]]:
    pages = harness.client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
    return [item for page in pages for item in page["Items"]]


def assert_no_plaintext(items: list[dict[str, Any]], tokens: frozenset[str]) -> None:
    """No attribute value, text or binary, contains any of the tokens."""
    assert tokens
    for item in items:
        blob = repr(item).encode() + b"".join(v["B"] for v in item.values() if "B" in v)
        leaked = [token for token in tokens if token.encode() in blob]
        assert not leaked, f"plaintext token in {item['open_id']}"


class DeadKms:
    """KMS does not answer (a closed port), with no retries so the test stays quick."""

    def __init__(self, key_id: str) -> None:
        client = boto3.client(
            "kms",
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1),
        )
        self.keys = KmsDataKeys(client, key_id)


class UnwrapOnly:
    """Data keys can be unwrapped but no new one can be generated (KMS throttling GenerateDataKey)."""

    def __init__(self, keys: DataKeys) -> None:
        self._keys = keys

    def generate(self, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        raise TokenVaultUnavailable("KMS GenerateDataKey failed (ThrottlingException)")

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        return self._keys.unwrap(wrapped, context)


def test_the_users_table_holds_ciphertext_only_and_a_sync_costs_one_kms_call(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN two onboarded users, synced once
    users = [harness.onboard("ou_enc_a", extra_calendars=1), harness.onboard("ou_enc_b")]
    for open_id in users:
        assert harness.sync(open_id).outcome == "synced"
    # WHEN a later sync finds nothing new
    with kms_calls(harness) as calls:
        assert harness.sync(users[0]).outcome == "synced"
    # THEN it made exactly one KMS call: the Decrypt of the user's data key
    assert calls == ["Decrypt"]
    # AND a scan of the users table (what a backup or an export holds) shows no token Feishu issued
    items = raw_items(harness, harness.settings.users_table)
    assert {item["open_id"]["S"] for item in items} == set(users)
    assert_no_plaintext(items, sim.issued_user_tokens())
    assert all("B" in item["access_token"] and "B" in item["refresh_token"] for item in items)


def test_a_refresh_costs_one_more_kms_call_and_the_new_pair_is_sealed(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_enc_refresh")
    harness.sync(open_id)
    sim.expire_access_tokens(open_id)
    with kms_calls(harness) as calls:
        assert harness.sync(open_id).outcome == "synced"
    assert sorted(calls) == ["Decrypt", "GenerateDataKey"]
    access, refresh = harness.tokens(open_id)
    assert access in sim.issued_user_tokens()
    assert refresh in sim.issued_user_tokens()
    assert refresh not in sim.used_refresh_tokens()
    assert_no_plaintext(raw_items(harness, harness.settings.users_table), sim.issued_user_tokens())


def test_a_ciphertext_copied_into_another_users_item_does_not_open(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN Eve, who can write the users table, copies Ada's sealed tokens into her own item
    ada, eve = harness.onboard("ou_enc_ada"), harness.onboard("ou_enc_eve")
    stolen = harness.client.get_item(TableName=harness.settings.users_table, Key={"open_id": {"S": ada}})["Item"]
    harness.client.update_item(
        TableName=harness.settings.users_table,
        Key={"open_id": {"S": eve}},
        UpdateExpression="SET access_token = :a, refresh_token = :r",
        ExpressionAttributeValues={":a": stolen["access_token"], ":r": stolen["refresh_token"]},
    )
    # WHEN Eve's sync runs THEN KMS refuses the data key (it is bound to Ada's open_id): the sync fails,
    # records why, calls Feishu with no token of Ada's, and drops nothing
    requests_before = len(sim.requests_log)
    result = harness.sync(eve)
    assert result.outcome == "failed"
    user = harness.user(eve)
    assert "KMS Decrypt failed (InvalidCiphertextException)" in user["last_error_message"]
    assert user["consecutive_failures"] == 1
    assert user["due_at"] > int(time.time())
    assert user["access_token"] == plain(stolen)["access_token"]
    assert len(sim.requests_log) == requests_before
    with pytest.raises(TokenVaultUnavailable):
        harness.vault.open(eve, stolen["access_token"]["B"], None)
    # AND Ada's own sync is unaffected
    assert harness.sync(ada).outcome == "synced"


def test_kms_unavailable_fails_the_sync_with_a_recorded_error_and_keeps_the_tokens(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a synced user with a change in Feishu, and KMS not answering
    open_id = harness.onboard("ou_enc_kms_down")
    harness.sync(open_id)
    before = harness.user(open_id)
    sim.create_calendar(open_id, summary="while KMS was down")
    dead = DeadKms(harness.settings.token_key_id).keys
    # WHEN the sync runs THEN it fails, says why, releases its lease and is due again after a backoff
    assert harness.sync(open_id, data_keys=dead).outcome == "failed"
    user = harness.user(open_id)
    assert user["last_error_message"].startswith("KMS Decrypt failed")
    assert "lease_owner" not in user
    assert int(time.time()) < user["due_at"] <= int(time.time()) + 120
    assert (user["access_token"], user["refresh_token"]) == (before["access_token"], before["refresh_token"])
    # AND once KMS answers again the retry brings the change in
    assert harness.sync(open_id).outcome == "synced"
    harness.assert_mirror_matches(open_id)


def test_no_data_key_for_the_new_pair_means_no_refresh_so_no_refresh_token_is_lost(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a user whose access token expired, and KMS refusing to generate data keys
    open_id = harness.onboard("ou_enc_no_datakey")
    harness.sync(open_id)
    _, refresh = harness.tokens(open_id)
    sim.expire_access_tokens(open_id)
    throttled = UnwrapOnly(KmsDataKeys(harness.kms, harness.settings.token_key_id))
    # WHEN the sync needs a refresh THEN it fails before presenting the refresh token to Feishu
    assert harness.sync(open_id, data_keys=throttled).outcome == "failed"
    assert refresh not in sim.used_refresh_tokens()
    assert harness.tokens(open_id)[1] == refresh
    # AND the retry refreshes once and syncs
    assert harness.sync(open_id).outcome == "synced"
    assert sim.used_refresh_tokens() == {refresh}
    assert sim.refresh_token_reuse_count == 0


def test_plaintext_tokens_from_before_encryption_are_sealed_by_the_next_sync(
    harness: Harness, sim: FeishuSimulator
) -> None:
    # GIVEN a user item as it was stored before encryption: both tokens in plaintext
    open_id = harness.onboard("ou_enc_legacy", extra_calendars=1)
    body = sim.issue_user_tokens(open_id)
    harness.set_user(open_id, access_token=body["access_token"], refresh_token=body["refresh_token"])
    assert harness.user(open_id)["access_token"] == body["access_token"]
    # WHEN its next sync runs
    with kms_calls(harness) as calls:
        assert harness.sync(open_id).outcome == "synced"
    # THEN it used the plaintext tokens, then sealed them in place (one data key), and the item holds no plaintext
    assert calls == ["GenerateDataKey"]
    assert harness.tokens(open_id) == (body["access_token"], body["refresh_token"])
    item = harness.client.get_item(TableName=harness.settings.users_table, Key={"open_id": {"S": open_id}})["Item"]
    assert "B" in item["access_token"]
    assert "B" in item["refresh_token"]
    assert_no_plaintext([item], sim.issued_user_tokens())
    harness.assert_mirror_matches(open_id)
    # AND the sync after it opens the sealed pair with one Decrypt
    with kms_calls(harness) as calls:
        assert harness.sync(open_id).outcome == "synced"
    assert calls == ["Decrypt"]
