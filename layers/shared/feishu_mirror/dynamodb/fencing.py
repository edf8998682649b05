"""Writes made under a user's sync lease (a fencing token): a sync that lost its lease can never write.

On the users table a write is one UpdateItem conditional on the lease; on any other table it is a
transaction whose first item checks the lease on the user's item (``LEASE_HELD``). Transactions are
retried on conflicts and throttling; a lease that no longer holds raises ``LeaseLost``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from feishu_mirror.dynamodb.calls import error_code, is_condition_failure
from feishu_mirror.dynamodb.values import attribute_value, attribute_values
from feishu_mirror.errors import LeaseLost
from feishu_mirror.models import Fence

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, TransactWriteItemTypeDef, UpdateTypeDef

# The lease condition on the user's item; its values are ``lease_values``.
LEASE_HELD = "lease_owner = :owner AND lease_expires_at > :now"
TRANSACTION_ATTEMPTS = 6
_RETRYABLE = frozenset({"TransactionCanceledException", "TransactionConflictException", "ThrottlingException"})


def lease_values(fence: Fence, now: int) -> dict[str, Any]:
    """The values of ``LEASE_HELD``."""
    return {":owner": fence.owner, ":now": now}


def lease_lost(fence: Fence) -> LeaseLost:
    """The error for a write refused because ``fence`` no longer holds the lease."""
    return LeaseLost(f"lease on {fence.open_id} lost")


class FencedWrites:
    """Writes that only land while the fence holds the user's lease (see the module docstring)."""

    def __init__(
        self, client: DynamoDBClient, users_table: str, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._client = client
        self.users_table = users_table
        self._sleep = sleep

    def update_user(
        self,
        fence: Fence,
        now: int,
        expression: str,
        values: Mapping[str, Any],
        *,
        names: Mapping[str, str] | None = None,
    ) -> None:
        """One UpdateItem of the user's item, conditional on the lease; raises ``LeaseLost``."""
        request: dict[str, Any] = {
            "TableName": self.users_table,
            "Key": {"open_id": attribute_value(fence.open_id)},
            "UpdateExpression": expression,
            "ConditionExpression": LEASE_HELD,
            "ExpressionAttributeValues": attribute_values({**values, **lease_values(fence, now)}),
        }
        if names:
            request["ExpressionAttributeNames"] = dict(names)
        try:
            self._client.update_item(**request)
        except ClientError as exc:
            if is_condition_failure(exc):
                raise lease_lost(fence) from exc
            raise

    def update(
        self,
        fence: Fence,
        now: int,
        *,
        table: str,
        key: Mapping[str, AttributeValueTypeDef],
        expression: str,
        values: Mapping[str, Any],
    ) -> None:
        """One item of another table updated in a transaction with the lease check."""
        update: UpdateTypeDef = {"TableName": table, "Key": dict(key), "UpdateExpression": expression}
        if values:
            update["ExpressionAttributeValues"] = attribute_values(values)
        self.transact(fence, now, [{"Update": update}])

    def transact(self, fence: Fence, now: int, items: Sequence[TransactWriteItemTypeDef]) -> None:
        """One transaction of ``items`` (at most 99: the lease check takes a slot), retried on conflicts
        and throttling with jittered backoff; raises ``LeaseLost`` when the lease check fails."""
        check: TransactWriteItemTypeDef = {
            "ConditionCheck": {
                "TableName": self.users_table,
                "Key": {"open_id": attribute_value(fence.open_id)},
                "ConditionExpression": LEASE_HELD,
                "ExpressionAttributeValues": attribute_values(lease_values(fence, now)),
            }
        }
        request = [check, *items]
        for attempt in range(TRANSACTION_ATTEMPTS):
            try:
                self._client.transact_write_items(TransactItems=request)
                return
            except ClientError as exc:
                error = error_code(exc)
                reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
                if error == "TransactionCanceledException" and reasons and reasons[0] == "ConditionalCheckFailed":
                    raise lease_lost(fence) from exc
                if error not in _RETRYABLE or attempt == TRANSACTION_ATTEMPTS - 1:
                    raise
                self._sleep(random.uniform(0, 0.05 * 2**attempt))  # noqa: S311 - jitter
