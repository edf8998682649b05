"""When each user's sync runs, on the users table: pings and claims, the sync's lease, the due index.

A ping bumps ``dirty_seq`` and makes the user due; a claim (``pending_invoke_until``) says a sync was
started and has not taken the lease yet, so bursts of pings start one; the lease (``lease_owner``,
``lease_expires_at``) is held by the one running sync and released only when no ping came meanwhile
(conditional on ``dirty_seq``). The resync reads the sparse due index (``due_shard``, ``due_at``) and
the status index (users awaiting re-authorisation). Every write is one conditional UpdateItem.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from feishu_mirror.dynamodb.calls import is_condition_failure, query_pages
from feishu_mirror.dynamodb.fencing import lease_lost
from feishu_mirror.dynamodb.users import DUE_INDEX, DUE_SHARDS, STATUS_INDEX, UsersTable, user_record
from feishu_mirror.dynamodb.values import attribute_values, plain
from feishu_mirror.errors import UnknownUser
from feishu_mirror.models import ACTIVE, REAUTH_REQUIRED, Fence, UserRecord

# Every ping keeps the time of the earliest ping (push or operator resync) the mirror does not reflect yet (for EventToMirrorLag).
_PENDING_PING = "pending_ping_at = if_not_exists(pending_ping_at, :now)"
_ACTIVE_USER = "attribute_exists(open_id) AND #status = :active"
_CLAIMABLE = (
    f"{_ACTIVE_USER}"
    " AND (attribute_not_exists(pending_invoke_until) OR pending_invoke_until <= :now)"
    " AND (attribute_not_exists(lease_expires_at) OR lease_expires_at <= :now)"
)
_STATUS = {"#status": "status"}


def _dirty(expression: str, values: dict[str, Any], calendar_ids: frozenset[str]) -> tuple[str, dict[str, Any]]:
    """Add ``calendar_ids`` (calendars whose events changed) to the user's ``dirty_calendars`` set."""
    if not calendar_ids:
        return expression, values
    return expression.replace("ADD dirty_seq :one", "ADD dirty_seq :one, dirty_calendars :cals"), {
        **values,
        ":cals": set(calendar_ids),
    }


class SyncSchedule:
    """Pings, claims, leases and the due index (see the module docstring)."""

    def __init__(self, users: UsersTable) -> None:
        self._users = users

    def get(self, open_id: str) -> UserRecord | None:
        """The user's record (strongly consistent), or None."""
        return self._users.get(open_id)

    # -------------------------------------------------------------- pings and claims
    def mark_dirty(self, open_id: str, now: int, calendar_ids: frozenset[str] = frozenset()) -> UserRecord | None:
        """Record a ping: bump ``dirty_seq`` and make the user due. None for unknown/inactive users.

        ``calendar_ids`` are calendars whose events changed: the next sync lists their events.
        """
        expression, values = _dirty(
            f"ADD dirty_seq :one SET due_at = :now, last_ping_at = :now, {_PENDING_PING}",
            {":one": 1, ":now": now, ":active": ACTIVE},
            calendar_ids,
        )
        attributes = self._users.update(
            open_id, expression, values, condition=_ACTIVE_USER, names=_STATUS, return_new=True
        )
        return user_record(attributes) if attributes else None

    def ping_and_claim(self, open_id: str, now: int, until: int, calendar_ids: frozenset[str] = frozenset()) -> bool:
        """The common case of a ping in one write: mark the user dirty and claim the invocation.

        False when a sync runs or is pending, or the user is unknown or inactive; the caller then
        falls back to ``mark_dirty`` so the running sync loops once more.
        """
        expression, values = _dirty(
            f"ADD dirty_seq :one SET last_ping_at = :now, pending_invoke_until = :until, due_at = :until, {_PENDING_PING}",
            {":one": 1, ":now": now, ":until": until, ":active": ACTIVE},
            calendar_ids,
        )
        return self._users.update(open_id, expression, values, condition=_CLAIMABLE, names=_STATUS) is not None

    def claim_invocation(self, open_id: str, now: int, until: int) -> bool:
        """Claim the right to start a sync: no sync running and none already started.

        Moves ``due_at`` to ``until`` so the resync does not start it again while the invocation is
        queued; the sync sets the real ``due_at`` when it finishes. If the invocation is lost, the
        user is due again at ``until``.
        """
        claimed = self._users.update(
            open_id,
            "SET pending_invoke_until = :until, due_at = :until",
            {":until": until, ":now": now, ":active": ACTIVE},
            condition=_CLAIMABLE,
            names=_STATUS,
        )
        return claimed is not None

    # -------------------------------------------------------------- the lease
    def acquire_lease(self, open_id: str, owner: str, now: int, expires_at: int) -> UserRecord | None:
        """Take the user's sync lease; None while any sync holds it. Raises ``UnknownUser``.

        A held lease is never taken over, not even by the same ``owner``: every attempt must bring an
        owner of its own (Lambda may run two copies of one asynchronous event, with one request id).
        """
        try:
            response = self._users.client.update_item(
                TableName=self._users.table_name,
                Key=self._users.key(open_id),
                UpdateExpression=(
                    "SET lease_owner = :owner, lease_expires_at = :exp, last_attempt_at = :now"
                    " REMOVE pending_invoke_until"
                ),
                ConditionExpression=(
                    "attribute_exists(open_id) AND (attribute_not_exists(lease_expires_at) OR lease_expires_at <= :now)"
                ),
                ExpressionAttributeValues=attribute_values({":owner": owner, ":exp": expires_at, ":now": now}),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            if "Item" not in exc.response:
                raise UnknownUser(open_id) from exc
            return None
        return user_record(response["Attributes"])

    def release_after_success(
        self,
        fence: Fence,
        now: int,
        *,
        seen_dirty_seq: int,
        due_at: int,
        handled_calendars: frozenset[str] = frozenset(),
        held_event_deletions: int = 0,
        items_reduced: int = 0,
    ) -> UserRecord | None:
        """Release the lease if no ping arrived since ``seen_dirty_seq``; else return the fresh record.

        The condition on ``dirty_seq`` is what makes coalescing safe: a ping that lands before this
        write makes it fail, and the running sync loops once more instead of missing the change; once
        it holds, every push so far is in the mirror (``pending_ping_at`` goes). ``handled_calendars``
        (whose events this sync listed) leave ``dirty_calendars``; ``held_event_deletions`` is how many
        event deletions are held back over all of the user's calendars, ``items_reduced`` how many live
        calendars and events are stored reduced (both for health). Raises ``LeaseLost``.
        """
        values: dict[str, Any] = {
            ":now": now,
            ":zero": 0,
            ":due": due_at,
            ":owner": fence.owner,
            ":seen": seen_dirty_seq,
        }
        sets = ["last_success_at = :now", "consecutive_failures = :zero", "due_at = :due"]
        removes = ["lease_owner", "lease_expires_at", "last_error_code", "last_error_message", "pending_ping_at"]
        for attribute, count in (("held_event_deletions", held_event_deletions), ("items_reduced", items_reduced)):
            if count:
                sets.append(f"{attribute} = :{attribute}")
                values[f":{attribute}"] = count
            else:
                removes.append(attribute)
        expression = f"SET {', '.join(sets)} REMOVE {', '.join(removes)}"
        if handled_calendars:
            expression += " DELETE dirty_calendars :handled"
            values[":handled"] = set(handled_calendars)
        try:
            self._users.client.update_item(
                TableName=self._users.table_name,
                Key=self._users.key(fence.open_id),
                UpdateExpression=expression,
                ConditionExpression="lease_owner = :owner AND dirty_seq = :seen",
                ExpressionAttributeValues=attribute_values(values),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            current = exc.response.get("Item")
            record = user_record(current) if isinstance(current, dict) else None
            if record is None or record.lease_owner != fence.owner:
                raise lease_lost(fence) from exc
            return record
        return None

    def release_after_failure(
        self, fence: Fence, *, code: int | None, message: str, due_at: int, failed: bool = True
    ) -> None:
        """Release the lease, record the error (no secrets) and when to try again."""
        sets = ["due_at = :due"]
        values: dict[str, Any] = {":due": due_at, ":owner": fence.owner}
        if failed:
            sets += [
                "last_error_message = :msg",
                "consecutive_failures = if_not_exists(consecutive_failures, :z) + :one",
            ]
            values |= {":msg": message[:500], ":z": 0, ":one": 1}
            if code is not None:
                sets.append("last_error_code = :code")
                values[":code"] = code
        self._users.update(
            fence.open_id,
            f"SET {', '.join(sets)} REMOVE lease_owner, lease_expires_at",
            values,
            condition="lease_owner = :owner",
        )

    # -------------------------------------------------------------- the resync's indexes
    def due_users(self, now: int, limit: int) -> list[str]:
        """Users whose ``due_at`` has passed, oldest first, from the sparse due index (no scan): at most
        ``limit`` from each shard, merged."""
        found: list[tuple[int, str]] = []
        for shard in range(DUE_SHARDS):
            request = {
                "TableName": self._users.table_name,
                "IndexName": DUE_INDEX,
                "KeyConditionExpression": "due_shard = :shard AND due_at <= :now",
                "ExpressionAttributeValues": attribute_values({":shard": shard, ":now": now}),
                "Limit": limit,
            }
            taken = 0
            for page in query_pages(self._users.client, request):
                for item in page.get("Items", []):
                    user = plain(item)
                    found.append((user["due_at"], user["open_id"]))
                taken += len(page.get("Items", []))
                if taken >= limit:
                    break
        found.sort()
        return [open_id for _, open_id in found[:limit]]

    def count_awaiting_reauth(self) -> int:
        """How many users must authorise again (a COUNT query of the status index: their keys only)."""
        request = {
            "TableName": self._users.table_name,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#s = :reauth",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": attribute_values({":reauth": REAUTH_REQUIRED}),
            "Select": "COUNT",
        }
        return sum(int(page.get("Count", 0)) for page in query_pages(self._users.client, request))
