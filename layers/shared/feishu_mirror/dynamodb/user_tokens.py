"""A user's authorisation on the users table: the sealed token pair and its ``token_version``, the
refresh mark, the calendar-change subscription made with it, and ``reauth_required``.

Refresh tokens are single-use, so every write of a pair is conditional on the ``token_version`` it
replaces: a sync never overwrites a newer consent (``TokensSuperseded``), and a rotated pair, which
exists nowhere else, is stored through DynamoDB's hiccups (``save_tokens``).
"""

from __future__ import annotations

import random
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from feishu_mirror.dynamodb.calls import is_condition_failure, is_transient
from feishu_mirror.dynamodb.fencing import LEASE_HELD, lease_lost, lease_values
from feishu_mirror.dynamodb.users import UsersTable, due_shard, user_record
from feishu_mirror.dynamodb.values import attribute_values
from feishu_mirror.errors import TokensSuperseded
from feishu_mirror.models import ACTIVE, REAUTH_REQUIRED, Fence, SealedGrant, UserIdentity, UserRecord
from feishu_mirror.observability import logger

TOKEN_SAVE_ATTEMPTS = 8  # on top of boto3's own retries: a rotated pair exists nowhere else


class UserTokens:
    """Writes of a user's authorisation (see the module docstring)."""

    def __init__(self, users: UsersTable) -> None:
        self._users = users

    def get(self, open_id: str) -> UserRecord | None:
        """The user's record (strongly consistent), or None."""
        return self._users.get(open_id)

    def save_authorization(self, identity: UserIdentity, grant: SealedGrant, now: int) -> None:
        """Store a freshly authorised user's tokens (sealed) and make the user due for a sync now.

        A returning user keeps their sync state; a user marked ``reauth_required`` becomes active. The
        new ``token_version`` tells a sync still running with the old tokens that they were superseded.
        """
        sets = [
            "#status = :active",
            "#name = :name",
            "union_id = :union",
            "access_token = :at",
            "access_expires_at = :ax",
            "#scope = :scope",
            "token_version = if_not_exists(token_version, :zero) + :one",
            "authorized_at = :now",
            "created_at = if_not_exists(created_at, :now)",
            "dirty_seq = if_not_exists(dirty_seq, :zero)",
            "consecutive_failures = :zero",
            "due_shard = :shard",
            "due_at = :now",
        ]
        values: dict[str, Any] = {
            ":active": ACTIVE,
            ":name": identity.name,
            ":union": identity.union_id,
            ":at": grant.access_token,
            ":ax": grant.access_expires_at,
            ":scope": grant.scope,
            ":zero": 0,
            ":one": 1,
            ":now": now,
            ":shard": due_shard(identity.open_id),
        }
        removes = ["last_error_code", "last_error_message", "refresh_started_version", "reauth_cause", "missing_scope"]
        if grant.refresh_token:
            sets.append("refresh_token = :rt, refresh_expires_at = :rx")
            values |= {":rt": grant.refresh_token, ":rx": grant.refresh_expires_at or 0}
        else:
            removes += ["refresh_token", "refresh_expires_at"]
        self._users.update(
            identity.open_id,
            f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            values,
            names={"#status": "status", "#name": "name", "#scope": "scope"},
        )

    def mark_subscribed(self, open_id: str, now: int) -> None:
        """Record that the calendar-change subscription was (re)asserted (harmless metadata, no fence)."""
        self._users.update(open_id, "SET subscribed_at = :now", {":now": now}, condition="attribute_exists(open_id)")

    # -------------------------------------------------------------- refreshing the pair
    def _superseded_or_lost(self, fence: Fence, token_version: int, exc: ClientError) -> Exception:
        """After a failed condition: ``TokensSuperseded`` if the tokens moved on, else ``LeaseLost``."""
        current = exc.response.get("Item")
        if isinstance(current, dict) and user_record(current).token_version != token_version:
            return TokensSuperseded(f"tokens of {fence.open_id} replaced")
        return lease_lost(fence)

    def begin_refresh(self, fence: Fence, now: int, token_version: int) -> None:
        """Record, before the refresh request goes out, that the stored refresh token is being spent.

        Should the answer never be stored (lost, or this invocation killed), the next attempt finds the
        mark and does not send that refresh token again. Raises ``TokensSuperseded`` when the user's tokens
        are no longer those of ``token_version``, ``LeaseLost`` without the lease.
        """
        try:
            self._users.client.update_item(
                TableName=self._users.table_name,
                Key=self._users.key(fence.open_id),
                UpdateExpression="SET refresh_started_version = :v, refresh_started_at = :now",
                ConditionExpression=f"{LEASE_HELD} AND token_version = :v",
                ExpressionAttributeValues=attribute_values({":v": token_version, **lease_values(fence, now)}),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            raise self._superseded_or_lost(fence, token_version, exc) from exc

    def end_refresh(self, open_id: str, token_version: int) -> None:
        """Clear the mark of ``begin_refresh`` after a refresh Feishu certainly did not process."""
        self._users.update(
            open_id,
            "REMOVE refresh_started_version, refresh_started_at",
            {":v": token_version},
            condition="token_version = :v",
        )

    def save_tokens(self, open_id: str, now: int, grant: SealedGrant, *, token_version: int) -> int:
        """Persist a rotated token pair (sealed) in place of ``token_version``'s, atomically; returns the new version.

        Conditional on the version alone, not on the lease: the pair just received exists nowhere else and
        the old refresh token is spent, so it is stored whenever no newer pair (a new consent) is. A grant
        without a refresh token keeps the stored one. Transient DynamoDB failures are retried (the write is
        idempotent: a retry finds its own pair and succeeds). Raises ``TokensSuperseded`` when a newer pair
        is stored.
        """
        sets = ["access_token = :at", "access_expires_at = :ax", "token_version = :next", "refreshed_at = :now"]
        values: dict[str, Any] = {
            ":at": grant.access_token,
            ":ax": grant.access_expires_at,
            ":v": token_version,
            ":next": token_version + 1,
            ":now": now,
        }
        if grant.refresh_token:
            sets.append("refresh_token = :rt")
            values[":rt"] = grant.refresh_token
            if grant.refresh_expires_at:
                sets.append("refresh_expires_at = :rx")
                values[":rx"] = grant.refresh_expires_at
        request: dict[str, Any] = {
            "TableName": self._users.table_name,
            "Key": self._users.key(open_id),
            "UpdateExpression": f"SET {', '.join(sets)} REMOVE refresh_started_version, refresh_started_at",
            "ConditionExpression": "token_version = :v OR (token_version = :next AND access_token = :at)",
            "ExpressionAttributeValues": attribute_values(values),
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        for attempt in range(TOKEN_SAVE_ATTEMPTS):
            try:
                self._users.client.update_item(**request)
                return token_version + 1
            except ClientError as exc:
                if is_condition_failure(exc):
                    raise TokensSuperseded(f"tokens of {open_id} replaced") from exc
                if not is_transient(exc) or attempt == TOKEN_SAVE_ATTEMPTS - 1:
                    raise
                error: Exception = exc
            except (BotoConnectionError, HTTPClientError) as exc:
                if attempt == TOKEN_SAVE_ATTEMPTS - 1:
                    raise
                error = exc
            logger.warning("token_save_retried", extra={"attempt": attempt + 1, "error": type(error).__name__})
            self._users.sleep(random.uniform(0, min(2.0, 0.1 * 2**attempt)))  # noqa: S311 - jitter
        raise AssertionError("unreachable")  # pragma: no cover

    def seal_stored_tokens(self, fence: Fence, now: int, sealed: SealedGrant, *, token_version: int) -> bool:
        """Replace plaintext tokens (written before encryption) with the same tokens sealed; under the lease
        and only while no new authorisation replaced them (``token_version``). False when one did."""
        refresh = ", refresh_token = :rt" if sealed.refresh_token else ""
        values: dict[str, Any] = {":at": sealed.access_token, ":v": token_version, **lease_values(fence, now)}
        if sealed.refresh_token:
            values[":rt"] = sealed.refresh_token
        unchanged = (
            "token_version = :v" if token_version else "(attribute_not_exists(token_version) OR token_version = :v)"
        )
        done = self._users.update(
            fence.open_id,
            f"SET access_token = :at{refresh}, tokens_sealed_at = :now",
            values,
            condition=f"{LEASE_HELD} AND {unchanged}",
        )
        return done is not None

    def mark_reauth_required(
        self,
        fence: Fence,
        now: int,
        *,
        token_version: int,
        code: int,
        message: str,
        cause: str,
        missing_scope: str | None = None,
    ) -> bool:
        """The user must authorise again: drop the dead tokens, say why, and leave the due index.

        Only while this sync holds the lease and the tokens are still those of ``token_version``: False
        (nothing written) when the user has consented again meanwhile, or the lease is gone.
        """
        sets = [
            "#status = :reauth",
            "last_error_code = :code",
            "last_error_message = :msg",
            "reauth_required_at = :now",
            "reauth_cause = :cause",
        ]
        values: dict[str, Any] = {
            ":reauth": REAUTH_REQUIRED,
            ":code": code,
            ":msg": message[:500],
            ":now": now,
            ":owner": fence.owner,
            ":cause": cause,
            ":v": token_version,
        }
        removes = [
            "lease_owner",
            "lease_expires_at",
            "due_at",
            "access_token",
            "refresh_token",
            "pending_invoke_until",
            "pending_ping_at",
            "refresh_started_version",
            "refresh_started_at",
        ]
        if missing_scope:
            sets.append("missing_scope = :scope")
            values[":scope"] = missing_scope[:500]
        else:
            removes.append("missing_scope")
        done = self._users.update(
            fence.open_id,
            f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            values,
            condition="lease_owner = :owner AND token_version = :v",
            names={"#status": "status"},
        )
        return done is not None
