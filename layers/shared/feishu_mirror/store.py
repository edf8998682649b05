"""All DynamoDB access: calendars, users (tokens, sync state, lease, health), OAuth state, rate gate.

The only module that touches boto3's DynamoDB API. Calendar writes go in transactions that also
check the user's lease (a fencing token), so a sync that lost its lease can never write; user-record
writes made during a sync carry the same condition. Numbers are stored as integers (epoch seconds).
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from feishu_mirror.errors import DeadlineExceeded, LeaseLost
from feishu_mirror.models import (
    CALENDAR_FIELDS,
    Calendar,
    Checkpoint,
    FieldValue,
    HeldSweep,
    StoredCalendar,
    TokenGrant,
    UserIdentity,
    UserRecord,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, TransactWriteItemTypeDef

DUE_INDEX = "due-index"
DUE_SHARDS = 8
TRANSACTION_ITEMS = 100  # DynamoDB's limit; one slot is the lease check
BATCH_GET_KEYS = 100
ACTIVE = "active"
REAUTH_REQUIRED = "reauth_required"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _av(value: Any) -> AttributeValueTypeDef:
    return _serializer.serialize(value)


def attribute_values(values: Mapping[str, Any]) -> dict[str, AttributeValueTypeDef]:
    """Plain Python values (ints, strings, bools, lists, maps) as DynamoDB attribute values."""
    return {name: _av(value) for name, value in values.items()}


def plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB item as plain Python values (numbers as ints)."""
    out: dict[str, Any] = {}
    for name, value in item.items():
        plain = _deserializer.deserialize(value)
        out[name] = int(plain) if isinstance(plain, Decimal) else plain
    return out


def _is_condition_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def due_shard(open_id: str) -> int:
    """The due-index partition of a user: spreads index writes over ``DUE_SHARDS`` partitions."""
    return zlib.crc32(open_id.encode("utf-8")) % DUE_SHARDS


# ---------------------------------------------------------------------------------------- users
def _checkpoint(raw: Any) -> Checkpoint | None:
    if not isinstance(raw, dict) or raw.get("kind") not in ("full", "incremental"):
        return None
    return Checkpoint(
        kind=raw["kind"],
        page_token=str(raw.get("page_token", "")),
        seen_ids=frozenset(str(i) for i in raw.get("seen_ids", [])),
        started_at=int(raw.get("started_at", 0)),
    )


def _user(item: Mapping[str, Any]) -> UserRecord:
    raw = plain(item)
    held = raw.get("held_sweep")
    return UserRecord(
        open_id=raw["open_id"],
        status=raw.get("status", ACTIVE),
        name=raw.get("name", ""),
        access_token=raw.get("access_token", ""),
        access_expires_at=raw.get("access_expires_at", 0),
        refresh_token=raw.get("refresh_token"),
        refresh_expires_at=raw.get("refresh_expires_at"),
        token_version=raw.get("token_version", 0),
        sync_token=raw.get("sync_token"),
        checkpoint=_checkpoint(raw.get("checkpoint")),
        held_sweep=HeldSweep(int(held["count"]), int(held["first_seen_at"])) if isinstance(held, dict) else None,
        dirty_seq=raw.get("dirty_seq", 0),
        lease_owner=raw.get("lease_owner"),
        lease_expires_at=raw.get("lease_expires_at", 0),
        pending_invoke_until=raw.get("pending_invoke_until", 0),
        subscribed_at=raw.get("subscribed_at"),
        last_success_at=raw.get("last_success_at"),
        consecutive_failures=raw.get("consecutive_failures", 0),
        calendars_mirrored=raw.get("calendars_mirrored", 0),
    )


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of holding a user's lease, checked by every write made during that user's sync."""

    open_id: str
    owner: str


class UnknownUser(LookupError):
    """No such user in the users table (never onboarded)."""


class UserStore:
    """The users table: one item per authorised user, keyed by ``open_id``."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self.table_name = table_name

    def get(self, open_id: str) -> UserRecord | None:
        """The user's record (strongly consistent), or None."""
        item = self._client.get_item(TableName=self.table_name, Key={"open_id": _av(open_id)}, ConsistentRead=True).get(
            "Item"
        )
        return _user(item) if item else None

    def get_plain(self, open_id: str) -> dict[str, Any] | None:
        """The raw item as plain Python values (health reporting, tests)."""
        item = self._client.get_item(TableName=self.table_name, Key={"open_id": _av(open_id)}, ConsistentRead=True).get(
            "Item"
        )
        return plain(item) if item else None

    def _update(
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
            "Key": {"open_id": _av(open_id)},
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
            response = self._client.update_item(**request)
        except ClientError as exc:
            if _is_condition_failure(exc):
                return None
            raise
        return dict(response.get("Attributes") or {})

    def save_authorization(self, identity: UserIdentity, grant: TokenGrant, now: int) -> None:
        """Store a freshly authorised user's tokens and make the user due for a sync now.

        A returning user keeps their sync state; a user marked ``reauth_required`` becomes active.
        """
        refresh = "refresh_token = :rt, refresh_expires_at = :rx" if grant.refresh_token else None
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
        removes = ["last_error_code", "last_error_message"]
        if refresh:
            sets.append(refresh)
            values |= {":rt": grant.refresh_token, ":rx": grant.refresh_expires_at or 0}
        else:
            removes += ["refresh_token", "refresh_expires_at"]
        self._update(
            identity.open_id,
            f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            values,
            names={"#status": "status", "#name": "name", "#scope": "scope"},
        )

    def mark_dirty(self, open_id: str, now: int) -> UserRecord | None:
        """Record a ping: bump ``dirty_seq`` and make the user due. None for unknown/inactive users."""
        attributes = self._update(
            open_id,
            "ADD dirty_seq :one SET due_at = :now, last_ping_at = :now",
            {":one": 1, ":now": now, ":active": ACTIVE},
            condition="attribute_exists(open_id) AND #status = :active",
            names={"#status": "status"},
            return_new=True,
        )
        return _user(attributes) if attributes else None

    _CLAIMABLE = (
        "attribute_exists(open_id) AND #status = :active"
        " AND (attribute_not_exists(pending_invoke_until) OR pending_invoke_until <= :now)"
        " AND (attribute_not_exists(lease_expires_at) OR lease_expires_at <= :now)"
    )

    def ping_and_claim(self, open_id: str, now: int, until: int) -> bool:
        """The common case of a ping in one write: mark the user dirty and claim the invocation.

        False when a sync runs or is pending, or the user is unknown or inactive; the caller then
        falls back to ``mark_dirty`` so the running sync loops once more.
        """
        claimed = self._update(
            open_id,
            "ADD dirty_seq :one SET last_ping_at = :now, pending_invoke_until = :until, due_at = :until",
            {":one": 1, ":now": now, ":until": until, ":active": ACTIVE},
            condition=self._CLAIMABLE,
            names={"#status": "status"},
        )
        return claimed is not None

    def claim_invocation(self, open_id: str, now: int, until: int) -> bool:
        """Claim the right to start a sync: no sync running and none already started.

        Moves ``due_at`` to ``until`` so the resync does not start it again while the invocation is
        queued; the sync sets the real ``due_at`` when it finishes. If the invocation is lost, the
        user is due again at ``until``.
        """
        claimed = self._update(
            open_id,
            "SET pending_invoke_until = :until, due_at = :until",
            {":until": until, ":now": now, ":active": ACTIVE},
            condition=self._CLAIMABLE,
            names={"#status": "status"},
        )
        return claimed is not None

    def acquire_lease(self, open_id: str, owner: str, now: int, expires_at: int) -> UserRecord | None:
        """Take the user's sync lease; None when another sync holds it. Raises ``UnknownUser``."""
        try:
            response = self._client.update_item(
                TableName=self.table_name,
                Key={"open_id": _av(open_id)},
                UpdateExpression=(
                    "SET lease_owner = :owner, lease_expires_at = :exp, last_attempt_at = :now"
                    " REMOVE pending_invoke_until"
                ),
                ConditionExpression=(
                    "attribute_exists(open_id) AND (attribute_not_exists(lease_expires_at)"
                    " OR lease_expires_at <= :now OR lease_owner = :owner)"
                ),
                ExpressionAttributeValues=attribute_values({":owner": owner, ":exp": expires_at, ":now": now}),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise
            if "Item" not in exc.response:
                raise UnknownUser(open_id) from exc
            return None
        return _user(response["Attributes"])

    _FENCE = "lease_owner = :owner AND lease_expires_at > :now"

    def _fenced(self, fence: Fence, now: int, expression: str, values: Mapping[str, Any], **kwargs: Any) -> None:
        done = self._update(
            fence.open_id,
            expression,
            {**values, ":owner": fence.owner, ":now": now},
            condition=self._FENCE,
            **kwargs,
        )
        if done is None:
            raise LeaseLost(f"lease on {fence.open_id} lost")

    def save_checkpoint(self, fence: Fence, now: int, checkpoint: Checkpoint) -> None:
        """Remember how far the current listing got, so an interrupted sync resumes there."""
        self._fenced(
            fence,
            now,
            "SET checkpoint = :cp",
            {
                ":cp": {
                    "kind": checkpoint.kind,
                    "page_token": checkpoint.page_token,
                    "seen_ids": sorted(checkpoint.seen_ids),
                    "started_at": checkpoint.started_at,
                }
            },
        )

    def save_tokens(self, fence: Fence, now: int, grant: TokenGrant) -> None:
        """Persist a rotated token pair in one atomic write (under the lease)."""
        self._fenced(
            fence,
            now,
            "SET access_token = :at, access_expires_at = :ax, refresh_token = :rt, refresh_expires_at = :rx,"
            " token_version = token_version + :one, refreshed_at = :now",
            {
                ":at": grant.access_token,
                ":ax": grant.access_expires_at,
                ":rt": grant.refresh_token or "",
                ":rx": grant.refresh_expires_at or 0,
                ":one": 1,
            },
        )

    def commit_listing(
        self,
        fence: Fence,
        now: int,
        *,
        sync_token: str | None,
        calendars_mirrored: int,
        kind: str,
        held_sweep: HeldSweep | None,
        reset: bool,
    ) -> None:
        """After the last page: store the new ``sync_token`` and drop the checkpoint."""
        sets = ["calendars_mirrored = :n", "last_sync_kind = :kind"]
        removes = ["checkpoint"]
        values: dict[str, Any] = {":n": calendars_mirrored, ":kind": kind}
        if sync_token:
            sets.append("sync_token = :st")
            values[":st"] = sync_token
        else:
            removes.append("sync_token")
        if held_sweep:
            sets.append("held_sweep = :held")
            values[":held"] = {"count": held_sweep.count, "first_seen_at": held_sweep.first_seen_at}
        else:
            removes.append("held_sweep")
        if reset:
            sets.append("full_resync_count = if_not_exists(full_resync_count, :zero) + :one")
            values |= {":zero": 0, ":one": 1}
        self._fenced(fence, now, f"SET {', '.join(sets)} REMOVE {', '.join(removes)}", values)

    def discard_sync_state(self, fence: Fence, now: int) -> None:
        """Forget the sync token and checkpoint (after 190008), so the next listing is a full one."""
        self._fenced(fence, now, "REMOVE sync_token, checkpoint", {})

    def mark_subscribed(self, open_id: str, now: int) -> None:
        """Record that the calendar-change subscription was (re)asserted (harmless metadata, no fence)."""
        self._update(open_id, "SET subscribed_at = :now", {":now": now}, condition="attribute_exists(open_id)")

    def release_after_success(self, fence: Fence, now: int, *, seen_dirty_seq: int, due_at: int) -> UserRecord | None:
        """Release the lease if no ping arrived since ``seen_dirty_seq``; else return the fresh record.

        The condition on ``dirty_seq`` is what makes coalescing safe: a ping that lands before this
        write makes it fail, and the running sync loops once more instead of missing the change.
        """
        try:
            self._client.update_item(
                TableName=self.table_name,
                Key={"open_id": _av(fence.open_id)},
                UpdateExpression=(
                    "SET last_success_at = :now, consecutive_failures = :zero, due_at = :due"
                    " REMOVE lease_owner, lease_expires_at, last_error_code, last_error_message"
                ),
                ConditionExpression="lease_owner = :owner AND dirty_seq = :seen",
                ExpressionAttributeValues=attribute_values(
                    {":now": now, ":zero": 0, ":due": due_at, ":owner": fence.owner, ":seen": seen_dirty_seq}
                ),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise
            current = exc.response.get("Item")
            record = _user(current) if isinstance(current, dict) else None
            if record is None or record.lease_owner != fence.owner:
                raise LeaseLost(f"lease on {fence.open_id} lost") from exc
            return record
        return None

    def release_after_failure(
        self, fence: Fence, *, code: int | None, message: str, due_at: int, failed: bool = True
    ) -> None:
        """Release the lease, record the error (no secrets) and when to try again."""
        sets = ["due_at = :due"]
        values: dict[str, Any] = {":due": due_at, ":owner": fence.owner}
        removes = ["lease_owner", "lease_expires_at"]
        if failed:
            sets += [
                "last_error_message = :msg",
                "consecutive_failures = if_not_exists(consecutive_failures, :z) + :one",
            ]
            values |= {":msg": message[:500], ":z": 0, ":one": 1}
            if code is not None:
                sets.append("last_error_code = :code")
                values[":code"] = code
        self._update(
            fence.open_id,
            f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            values,
            condition="lease_owner = :owner",
        )

    def mark_reauth_required(self, fence: Fence, now: int, *, code: int, message: str) -> None:
        """The user must authorise again: drop the dead tokens and leave the due index."""
        self._update(
            fence.open_id,
            "SET #status = :reauth, last_error_code = :code, last_error_message = :msg, reauth_required_at = :now"
            " REMOVE lease_owner, lease_expires_at, due_at, access_token, refresh_token, pending_invoke_until",
            {":reauth": REAUTH_REQUIRED, ":code": code, ":msg": message[:500], ":now": now, ":owner": fence.owner},
            condition="lease_owner = :owner",
            names={"#status": "status"},
        )

    def due_users(self, now: int, limit: int) -> list[str]:
        """Users whose ``due_at`` has passed, oldest first, from the sparse due index (no scan)."""
        found: list[tuple[int, str]] = []
        for shard in range(DUE_SHARDS):
            request: dict[str, Any] = {
                "TableName": self.table_name,
                "IndexName": DUE_INDEX,
                "KeyConditionExpression": "due_shard = :shard AND due_at <= :now",
                "ExpressionAttributeValues": attribute_values({":shard": shard, ":now": now}),
                "Limit": limit,
            }
            taken = 0
            while taken < limit:
                page = self._client.query(**request)
                for item in page.get("Items", []):
                    user = plain(item)
                    found.append((user["due_at"], user["open_id"]))
                    taken += 1
                if "LastEvaluatedKey" not in page:
                    break
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        found.sort()
        return [open_id for _, open_id in found[:limit]]

    # ------------------------------------------------------------------ health, for operators
    # What an operator may see of a user: an allow-list read with a projection, so tokens, the
    # sync token and page tokens never even leave DynamoDB on this path.
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
        "held_sweep",
        "dirty_seq",
        "due_at",
        "lease_expires_at",
        "pending_invoke_until",
        "checkpoint.kind",
        "checkpoint.started_at",
    )

    def _health_projection(self) -> tuple[str, dict[str, str]]:
        names: dict[str, str] = {}
        paths = []
        for path in self.HEALTH_ATTRIBUTES:
            parts = []
            for part in path.split("."):
                alias = f"#h{len(names)}"
                names[alias] = part
                parts.append(alias)
            paths.append(".".join(parts))
        return ", ".join(paths), names

    def get_health(self, open_id: str) -> dict[str, Any] | None:
        """One user's health attributes (``HEALTH_ATTRIBUTES`` only, strongly consistent), or None."""
        projection, names = self._health_projection()
        item = self._client.get_item(
            TableName=self.table_name,
            Key={"open_id": _av(open_id)},
            ConsistentRead=True,
            ProjectionExpression=projection,
            ExpressionAttributeNames=names,
        ).get("Item")
        return plain(item) if item else None

    def list_health(self, limit: int, start: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of users' health attributes, and the ``open_id`` to pass as ``start`` for the next.

        A paginated Scan (in the table's hash order, eventually consistent): fine for an operator's
        page, which reads ``limit`` items per request; nothing on a hot path calls it. Each page costs
        the read units of the whole items scanned, not only of the projected attributes.
        """
        projection, names = self._health_projection()
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "Limit": limit,
            "ProjectionExpression": projection,
            "ExpressionAttributeNames": names,
        }
        if start:
            request["ExclusiveStartKey"] = {"open_id": _av(start)}
        page = self._client.scan(**request)
        users = [plain(item) for item in page.get("Items", [])]
        last = page.get("LastEvaluatedKey")
        return users, (plain(last)["open_id"] if last else None)


# ------------------------------------------------------------------------------------ calendars
def _stored(item: Mapping[str, Any]) -> StoredCalendar:
    raw = plain(item)
    fields: dict[str, FieldValue] = {name: raw[name] for name in CALENDAR_FIELDS if name in raw}
    return StoredCalendar(Calendar(raw["calendar_id"], fields), raw.get("deleted_at"))


class CalendarStore:
    """The calendars table: partition ``open_id``, sort ``calendar_id``, Feishu fields by name."""

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        users_table: str,
        *,
        tombstone_ttl_seconds: int = 30 * 24 * 3600,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self.table_name = table_name
        self._users_table = users_table
        self._tombstone_ttl = tombstone_ttl_seconds
        self._sleep = sleep
        self.write_requests = 0  # transactions sent, for benchmarks

    def load_all(self, open_id: str) -> dict[str, StoredCalendar]:
        """Every item of the user, tombstones included (strongly consistent)."""
        found: dict[str, StoredCalendar] = {}
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "open_id = :o",
            "ExpressionAttributeValues": attribute_values({":o": open_id}),
            "ConsistentRead": True,
        }
        while True:
            page = self._client.query(**request)
            for item in page.get("Items", []):
                stored = _stored(item)
                found[stored.calendar.calendar_id] = stored
            if "LastEvaluatedKey" not in page:
                return found
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def load_some(self, open_id: str, calendar_ids: Iterable[str]) -> dict[str, StoredCalendar]:
        """The items for these calendar ids that exist (BatchGetItem, strongly consistent)."""
        wanted = sorted(set(calendar_ids))
        found: dict[str, StoredCalendar] = {}
        for start in range(0, len(wanted), BATCH_GET_KEYS):
            keys = [
                {"open_id": _av(open_id), "calendar_id": _av(cid)} for cid in wanted[start : start + BATCH_GET_KEYS]
            ]
            request: dict[str, Any] = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
            for attempt in range(8):
                response = self._client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table_name, []):
                    stored = _stored(item)
                    found[stored.calendar.calendar_id] = stored
                request = dict(response.get("UnprocessedKeys") or {})
                if not request:
                    break
                self._sleep(random.uniform(0, 0.05 * 2**attempt))  # noqa: S311 - jitter
            else:
                raise RuntimeError("BatchGetItem kept returning unprocessed keys")
        return found

    def apply(
        self,
        fence: Fence,
        now: int,
        *,
        upserts: Sequence[Calendar] = (),
        deletions: Sequence[Calendar] = (),
    ) -> int:
        """Write changed calendars and tombstones, fenced by the user's lease; returns items written.

        Each transaction holds up to 99 items plus a check that ``fence`` still owns the lease.
        Raises ``LeaseLost`` when it does not.
        """
        now_ms = int(now * 1000)
        puts: list[dict[str, Any]] = []
        for calendar in upserts:
            puts.append(
                {
                    **calendar.fields,
                    "open_id": fence.open_id,
                    "calendar_id": calendar.calendar_id,
                    "mirrored_at": now_ms,
                }
            )
        for calendar in deletions:
            puts.append(
                {
                    **calendar.fields,
                    "open_id": fence.open_id,
                    "calendar_id": calendar.calendar_id,
                    "mirrored_at": now_ms,
                    "deleted_at": now,
                    "expires_at": now + self._tombstone_ttl,
                }
            )
        chunk = TRANSACTION_ITEMS - 1
        for start in range(0, len(puts), chunk):
            items: list[TransactWriteItemTypeDef] = [
                {
                    "ConditionCheck": {
                        "TableName": self._users_table,
                        "Key": {"open_id": _av(fence.open_id)},
                        "ConditionExpression": UserStore._FENCE,
                        "ExpressionAttributeValues": attribute_values({":owner": fence.owner, ":now": now}),
                    }
                }
            ]
            items += [
                {"Put": {"TableName": self.table_name, "Item": attribute_values(put)}}
                for put in puts[start : start + chunk]
            ]
            self._transact(fence, items)
        return len(puts)

    def _transact(self, fence: Fence, items: list[TransactWriteItemTypeDef]) -> None:
        for attempt in range(6):
            try:
                self.write_requests += 1
                self._client.transact_write_items(TransactItems=items)
                return
            except ClientError as exc:
                error = exc.response.get("Error", {}).get("Code")
                reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
                if error == "TransactionCanceledException" and reasons and reasons[0] == "ConditionalCheckFailed":
                    raise LeaseLost(f"lease on {fence.open_id} lost") from exc
                retryable = error in (
                    "TransactionCanceledException",
                    "TransactionConflictException",
                    "ThrottlingException",
                )
                if not retryable or attempt == 5:
                    raise
                self._sleep(random.uniform(0, 0.05 * 2**attempt))  # noqa: S311 - jitter


# ----------------------------------------------------------------------------------- OAuth state
@dataclass(frozen=True, slots=True)
class OAuthState:
    """A pending authorisation: single use, expiring."""

    state: str
    code_verifier: str
    redirect_uri: str
    expires_at: int


class OAuthStateStore:
    """The OAuth state table: ``state`` → PKCE verifier and redirect URI, with a TTL."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self.table_name = table_name

    def put(self, pending: OAuthState) -> None:
        """Store a new state (never overwrites an existing one)."""
        self._client.put_item(
            TableName=self.table_name,
            Item=attribute_values(
                {
                    "state": pending.state,
                    "code_verifier": pending.code_verifier,
                    "redirect_uri": pending.redirect_uri,
                    "expires_at": pending.expires_at,
                }
            ),
            ConditionExpression="attribute_not_exists(#s)",
            ExpressionAttributeNames={"#s": "state"},
        )

    def take(self, state: str) -> OAuthState | None:
        """Delete and return the state: a second take of the same state returns None."""
        response = self._client.delete_item(
            TableName=self.table_name, Key={"state": _av(state)}, ReturnValues="ALL_OLD"
        )
        item = response.get("Attributes")
        if not item:
            return None
        raw = plain(item)
        return OAuthState(raw["state"], raw["code_verifier"], raw["redirect_uri"], raw["expires_at"])


# ------------------------------------------------------------------------------------ rate gate
class DynamoRateGate:
    """An app-wide request scheduler shared by every Lambda container.

    Each request reserves the next slot of a single DynamoDB item with one conditional update: slots
    are ``interval_ms`` apart, so in any window of ``w`` ms at most ``w / interval_ms + 1`` requests
    start, whatever the concurrency. At 950 requests/minute this keeps under Feishu's 1000/min and
    50/s per-app limits with margin. A caller whose slot lies beyond its deadline raises
    ``DeadlineExceeded`` (the slot is wasted, which only makes the gate more conservative).
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        bucket: str,
        *,
        requests_per_minute: int = 950,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._table = table_name
        self._bucket = bucket
        self._interval_ms = -(-60_000 // requests_per_minute)
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self.waited_seconds = 0.0

    def acquire(self, deadline: float) -> None:
        """Reserve the next slot and sleep until it comes; raises ``DeadlineExceeded``."""
        slot_ms = self._reserve()
        wait = slot_ms / 1000 - self._clock()
        if wait <= 0:
            return
        if self._monotonic() + wait >= deadline:
            raise DeadlineExceeded("the Feishu rate gate has no slot before the deadline")
        self.waited_seconds += wait
        self._sleep(wait)

    def _reserve(self) -> int:
        key = {"bucket": _av(self._bucket)}
        for _ in range(20):
            now_ms = int(self._clock() * 1000)
            try:  # the gate is busy: take the slot after the last one handed out
                response = self._client.update_item(
                    TableName=self._table,
                    Key=key,
                    UpdateExpression="SET next_slot = next_slot + :i",
                    ConditionExpression="next_slot > :now",
                    ExpressionAttributeValues=attribute_values({":i": self._interval_ms, ":now": now_ms}),
                    ReturnValues="UPDATED_NEW",
                )
                return int(plain(response["Attributes"])["next_slot"]) - self._interval_ms
            except ClientError as exc:
                if not _is_condition_failure(exc):
                    raise
            try:  # the gate is idle: the slot is now
                self._client.update_item(
                    TableName=self._table,
                    Key=key,
                    UpdateExpression="SET next_slot = :next, expires_at = :ttl",
                    ConditionExpression="attribute_not_exists(next_slot) OR next_slot <= :now",
                    ExpressionAttributeValues=attribute_values(
                        {":next": now_ms + self._interval_ms, ":now": now_ms, ":ttl": now_ms // 1000 + 86400}
                    ),
                )
                return now_ms
            except ClientError as exc:
                if not _is_condition_failure(exc):
                    raise
        raise RuntimeError("could not reserve a Feishu request slot")
