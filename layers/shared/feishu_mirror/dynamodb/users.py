"""The users table (one item per authorised user, keyed by ``open_id``): reading a user and updating
one, shared by the adapters that each own one concern of the item — ``user_schedule`` (pings, claims,
the lease, the due index), ``user_tokens`` (authorisation and the token pair) and ``user_health`` (the
operator's allow-listed reads). The calendar list's listing state on the item is ``listings``'s.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import Binary
from botocore.exceptions import ClientError

from feishu_mirror.dynamodb.calls import is_condition_failure
from feishu_mirror.dynamodb.listings import decode_state
from feishu_mirror.dynamodb.values import attribute_value, attribute_values, plain
from feishu_mirror.models import ACTIVE, StoredToken, UserRecord

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

DUE_INDEX = "due-index"
STATUS_INDEX = "status-index"
DUE_SHARDS = 8


def due_shard(open_id: str) -> int:
    """The due-index partition of a user: spreads index writes over ``DUE_SHARDS`` partitions."""
    return zlib.crc32(open_id.encode("utf-8")) % DUE_SHARDS


def _stored_token(value: Any) -> StoredToken | None:
    """A token attribute as stored: sealed bytes, or a plaintext string from before encryption."""
    if isinstance(value, Binary):
        wrapped: Any = value  # boto3's stubs type Binary's payload loosely
        return bytes(wrapped.value)
    return value if isinstance(value, bytes | str) else None


def user_record(item: Mapping[str, Any]) -> UserRecord:
    """A users-table item (DynamoDB attribute values) as a ``UserRecord``."""
    raw = plain(item)
    return UserRecord(
        open_id=raw["open_id"],
        status=raw.get("status", ACTIVE),
        name=raw.get("name", ""),
        access_token=_stored_token(raw.get("access_token")) or b"",
        access_expires_at=raw.get("access_expires_at", 0),
        refresh_token=_stored_token(raw.get("refresh_token")),
        refresh_expires_at=raw.get("refresh_expires_at"),
        token_version=raw.get("token_version", 0),
        refresh_started_version=raw.get("refresh_started_version"),
        calendar_list=decode_state(raw, calendar_list=True),
        dirty_seq=raw.get("dirty_seq", 0),
        lease_owner=raw.get("lease_owner"),
        lease_expires_at=raw.get("lease_expires_at", 0),
        pending_invoke_until=raw.get("pending_invoke_until", 0),
        subscribed_at=raw.get("subscribed_at"),
        last_success_at=raw.get("last_success_at"),
        consecutive_failures=raw.get("consecutive_failures", 0),
        dirty_calendars=frozenset(str(c) for c in raw.get("dirty_calendars") or ()),
        pending_ping_at=raw.get("pending_ping_at"),
    )


class UsersTable:
    """Reads and conditional updates of one user's item."""

    def __init__(self, client: DynamoDBClient, table_name: str, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.table_name = table_name
        self.sleep = sleep

    def key(self, open_id: str) -> dict[str, Any]:
        """The item's key."""
        return {"open_id": attribute_value(open_id)}

    def get(self, open_id: str) -> UserRecord | None:
        """The user's record (strongly consistent), or None."""
        item = self.client.get_item(TableName=self.table_name, Key=self.key(open_id), ConsistentRead=True).get("Item")
        return user_record(item) if item else None

    def get_plain(self, open_id: str) -> dict[str, Any] | None:
        """The whole item as plain Python values (tests and local tools; never an operator's page)."""
        item = self.client.get_item(TableName=self.table_name, Key=self.key(open_id), ConsistentRead=True).get("Item")
        return plain(item) if item else None

    def update(
        self,
        open_id: str,
        expression: str,
        values: Mapping[str, Any],
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        return_new: bool = False,
    ) -> dict[str, Any] | None:
        """One UpdateItem; returns the new attributes (``{}`` unless asked) or None if the condition failed."""
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": self.key(open_id),
            "UpdateExpression": expression,
            "ReturnValues": "ALL_NEW" if return_new else "NONE",
        }
        if values:
            request["ExpressionAttributeValues"] = attribute_values(values)
        if names:
            request["ExpressionAttributeNames"] = dict(names)
        if condition:
            request["ConditionExpression"] = condition
        try:
            response = self.client.update_item(**request)
        except ClientError as exc:
            if is_condition_failure(exc):
                return None
            raise
        return dict(response.get("Attributes") or {})
