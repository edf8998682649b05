"""The operator's reads of the users table: an allow-list read with a projection, so tokens, the sync
token and page tokens never even leave DynamoDB on this path."""

from __future__ import annotations

from typing import Any

from feishu_mirror.dynamodb.users import UsersTable
from feishu_mirror.dynamodb.values import attribute_value, plain

# What an operator may see of a user.
HEALTH_ATTRIBUTES = (
    "open_id",
    "name",
    "status",
    "created_at",
    "authorized_at",
    "subscribed_at",
    "refreshed_at",
    "refresh_expires_at",
    "last_ping_at",
    "last_attempt_at",
    "last_success_at",
    "last_sync_kind",
    "last_error_code",
    "last_error_message",
    "consecutive_failures",
    "full_resync_count",
    "calendars_mirrored",
    "reauth_required_at",
    "reauth_cause",
    "missing_scope",
    "held_sweep",
    "held_event_deletions",
    "items_reduced",
    "pending_ping_at",
    "dirty_seq",
    "due_at",
    "lease_expires_at",
    "pending_invoke_until",
    "checkpoint.kind",
    "checkpoint.started_at",
)


def _projection() -> tuple[str, dict[str, str]]:
    """``HEALTH_ATTRIBUTES`` as a projection expression (every path segment by an alias) and its names."""
    names: dict[str, str] = {}
    paths = []
    for path in HEALTH_ATTRIBUTES:
        parts = []
        for part in path.split("."):
            alias = f"#h{len(names)}"
            names[alias] = part
            parts.append(alias)
        paths.append(".".join(parts))
    return ", ".join(paths), names


class UserHealthReads:
    """Users' health attributes (``HEALTH_ATTRIBUTES`` only), for the status pages."""

    def __init__(self, users: UsersTable) -> None:
        self._users = users
        self._projection, self._names = _projection()

    def get_health(self, open_id: str) -> dict[str, Any] | None:
        """One user's health attributes (strongly consistent), or None."""
        item = self._users.client.get_item(
            TableName=self._users.table_name,
            Key=self._users.key(open_id),
            ConsistentRead=True,
            ProjectionExpression=self._projection,
            ExpressionAttributeNames=self._names,
        ).get("Item")
        return plain(item) if item else None

    def list_health(self, limit: int, start: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of users' health attributes, and the ``open_id`` to pass as ``start`` for the next.

        A paginated Scan (in the table's hash order, eventually consistent): fine for an operator's
        page, which reads ``limit`` items per request; nothing on a hot path calls it. Each page costs
        the read units of the whole items scanned, not only of the projected attributes.
        """
        request: dict[str, Any] = {
            "TableName": self._users.table_name,
            "Limit": limit,
            "ProjectionExpression": self._projection,
            "ExpressionAttributeNames": self._names,
        }
        if start:
            request["ExclusiveStartKey"] = {"open_id": attribute_value(start)}
        page = self._users.client.scan(**request)
        users = [plain(item) for item in page.get("Items", [])]
        last = page.get("LastEvaluatedKey")
        return users, (plain(last)["open_id"] if last else None)
