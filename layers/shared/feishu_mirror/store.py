"""All DynamoDB access: calendars, events, users (tokens, sync state, lease, health), event
listings, OAuth state, rate gate.

The only module that touches boto3's DynamoDB API. Mirror writes (calendars and events) go in
transactions that also check the user's lease (a fencing token), so a sync that lost its lease can
never write; user-record and event-listing writes made during a sync carry the same condition.
Times are stored as integers (epoch seconds; the rate gate's slots in microseconds); Feishu's numbers
as they came (see ``storable``), and they read back exactly: integral numbers as ``int``, others as
``Decimal`` (``plain``).
"""

from __future__ import annotations

import random
import re
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from feishu_mirror.errors import DeadlineExceeded, LeaseLost, TokensSuperseded
from feishu_mirror.models import (
    CALENDAR_FIELDS,
    EVENT_FIELDS,
    Calendar,
    Checkpoint,
    Event,
    EventListing,
    FieldValue,
    HeldSweep,
    ListingState,
    SealedGrant,
    Stored,
    StoredToken,
    UserIdentity,
    UserRecord,
)
from feishu_mirror.observability import logger
from feishu_mirror.storable import REDUCED_ATTRIBUTE, stored_form

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        DeleteTypeDef,
        TransactWriteItemTypeDef,
        UpdateTypeDef,
    )

DUE_INDEX = "due-index"
STATUS_INDEX = "status-index"
DUE_SHARDS = 8
TRANSACTION_ITEMS = 100  # DynamoDB's limit; one slot is the lease check
TRANSACTION_BYTES = 3_500_000  # by estimate, of DynamoDB's 4 MB limit on a transaction's items
BATCH_GET_KEYS = 100
MAX_CHECKPOINT_BYTES = 200_000  # of compressed ids; DynamoDB items hold 400 KB
ACTIVE = "active"
REAUTH_REQUIRED = "reauth_required"


class _ExactDeserializer(TypeDeserializer):
    """boto3's deserializer with numbers read exactly: DynamoDB gives a large round number back with all
    its digits (1E+45 as 46 of them), which boto3's 38-digit context refuses to read (``decimal.Rounded``)."""

    def _deserialize_n(self, value: str) -> Decimal:
        return Decimal(value)


_serializer = TypeSerializer()
_deserializer = _ExactDeserializer()


def _av(value: Any) -> AttributeValueTypeDef:
    return _serializer.serialize(value)


def attribute_values(values: Mapping[str, Any]) -> dict[str, AttributeValueTypeDef]:
    """Plain Python values (ints, strings, bools, lists, maps) as DynamoDB attribute values."""
    return {name: _av(value) for name, value in values.items()}


def exact_numbers(value: Any) -> Any:
    """A deserialized value with every number as it reads best and exactly: integral numbers as ``int``,
    others as ``Decimal`` — inside maps, lists and sets too."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else value
    if isinstance(value, dict):
        return {key: exact_numbers(member) for key, member in value.items()}
    if isinstance(value, list):
        return [exact_numbers(member) for member in value]
    if isinstance(value, set):
        return {exact_numbers(member) for member in value}
    return value


def plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB item as plain Python values (``exact_numbers``); the one way items are read."""
    return {name: exact_numbers(_deserializer.deserialize(value)) for name, value in item.items()}


def _is_condition_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


# DynamoDB failures after which the same write may simply be sent again (boto3 has retried them already).
_TRANSIENT_ERRORS = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
    }
)


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code") in _TRANSIENT_ERRORS
    return isinstance(exc, BotoConnectionError | HTTPClientError)


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


def _stored_token(value: Any) -> StoredToken | None:
    """A token attribute as stored: sealed bytes, or a plaintext string from before encryption."""
    if isinstance(value, Binary):
        wrapped: Any = value  # boto3's stubs type Binary's payload loosely
        return bytes(wrapped.value)
    return value if isinstance(value, bytes | str) else None


def _user(item: Mapping[str, Any]) -> UserRecord:
    raw = plain(item)
    held = raw.get("held_sweep")
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
        calendars_reduced=raw.get("calendars_reduced", 0),
        dirty_calendars=frozenset(str(c) for c in raw.get("dirty_calendars") or ()),
        pending_ping_at=raw.get("pending_ping_at"),
    )


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of holding a user's lease, checked by every write made during that user's sync."""

    open_id: str
    owner: str


class UnknownUser(LookupError):
    """No such user in the users table (never onboarded)."""


# Every ping keeps the time of the earliest ping (push or operator resync) the mirror does not reflect yet (for EventToMirrorLag).
_PENDING_PING = "pending_ping_at = if_not_exists(pending_ping_at, :now)"


class UserStore:
    """The users table: one item per authorised user, keyed by ``open_id``."""

    TOKEN_SAVE_ATTEMPTS = 8  # on top of boto3's own retries: a rotated pair exists nowhere else

    def __init__(self, client: DynamoDBClient, table_name: str, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._client = client
        self.table_name = table_name
        self._sleep = sleep

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

    def save_authorization(self, identity: UserIdentity, grant: SealedGrant, now: int) -> None:
        """Store a freshly authorised user's tokens (sealed) and make the user due for a sync now.

        A returning user keeps their sync state; a user marked ``reauth_required`` becomes active. The
        new ``token_version`` tells a sync still running with the old tokens that they were superseded.
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
        removes = ["last_error_code", "last_error_message", "refresh_started_version", "reauth_cause", "missing_scope"]
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

    @staticmethod
    def _dirty(expression: str, values: dict[str, Any], calendar_ids: frozenset[str]) -> tuple[str, dict[str, Any]]:
        """Add ``calendar_ids`` (calendars whose events changed) to the user's ``dirty_calendars`` set."""
        if not calendar_ids:
            return expression, values
        return expression.replace("ADD dirty_seq :one", "ADD dirty_seq :one, dirty_calendars :cals"), {
            **values,
            ":cals": set(calendar_ids),
        }

    def mark_dirty(self, open_id: str, now: int, calendar_ids: frozenset[str] = frozenset()) -> UserRecord | None:
        """Record a ping: bump ``dirty_seq`` and make the user due. None for unknown/inactive users.

        ``calendar_ids`` are calendars whose events changed: the next sync lists their events.
        """
        expression, values = self._dirty(
            f"ADD dirty_seq :one SET due_at = :now, last_ping_at = :now, {_PENDING_PING}",
            {":one": 1, ":now": now, ":active": ACTIVE},
            calendar_ids,
        )
        attributes = self._update(
            open_id,
            expression,
            values,
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

    def ping_and_claim(self, open_id: str, now: int, until: int, calendar_ids: frozenset[str] = frozenset()) -> bool:
        """The common case of a ping in one write: mark the user dirty and claim the invocation.

        False when a sync runs or is pending, or the user is unknown or inactive; the caller then
        falls back to ``mark_dirty`` so the running sync loops once more.
        """
        expression, values = self._dirty(
            f"ADD dirty_seq :one SET last_ping_at = :now, pending_invoke_until = :until, due_at = :until, {_PENDING_PING}",
            {":one": 1, ":now": now, ":until": until, ":active": ACTIVE},
            calendar_ids,
        )
        claimed = self._update(
            open_id,
            expression,
            values,
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
        """Take the user's sync lease; None while any sync holds it. Raises ``UnknownUser``.

        A held lease is never taken over, not even by the same ``owner``: every attempt must bring an
        owner of its own (Lambda may run two copies of one asynchronous event, with one request id).
        """
        try:
            response = self._client.update_item(
                TableName=self.table_name,
                Key={"open_id": _av(open_id)},
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

    def _version_check(self, open_id: str, token_version: int, exc: ClientError) -> None:
        """After a failed condition: raise ``TokensSuperseded`` if the tokens moved on, else ``LeaseLost``."""
        current = exc.response.get("Item")
        if isinstance(current, dict) and _user(current).token_version != token_version:
            raise TokensSuperseded(f"tokens of {open_id} replaced") from exc
        raise LeaseLost(f"lease on {open_id} lost") from exc

    def begin_refresh(self, fence: Fence, now: int, token_version: int) -> None:
        """Record, before the refresh request goes out, that the stored refresh token is being spent.

        Should the answer never be stored (lost, or this invocation killed), the next attempt finds the
        mark and does not send that refresh token again. Raises ``TokensSuperseded`` when the user's tokens
        are no longer those of ``token_version``, ``LeaseLost`` without the lease.
        """
        try:
            self._client.update_item(
                TableName=self.table_name,
                Key={"open_id": _av(fence.open_id)},
                UpdateExpression="SET refresh_started_version = :v, refresh_started_at = :now",
                ConditionExpression=f"{self._FENCE} AND token_version = :v",
                ExpressionAttributeValues=attribute_values({":v": token_version, ":owner": fence.owner, ":now": now}),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise
            self._version_check(fence.open_id, token_version, exc)

    def end_refresh(self, open_id: str, token_version: int) -> None:
        """Clear the mark of ``begin_refresh`` after a refresh Feishu certainly did not process."""
        self._update(
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
        sets = [
            "access_token = :at",
            "access_expires_at = :ax",
            "token_version = :next",
            "refreshed_at = :now",
        ]
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
            "TableName": self.table_name,
            "Key": {"open_id": _av(open_id)},
            "UpdateExpression": f"SET {', '.join(sets)} REMOVE refresh_started_version, refresh_started_at",
            "ConditionExpression": "token_version = :v OR (token_version = :next AND access_token = :at)",
            "ExpressionAttributeValues": attribute_values(values),
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        for attempt in range(self.TOKEN_SAVE_ATTEMPTS):
            try:
                self._client.update_item(**request)
                return token_version + 1
            except ClientError as exc:
                if _is_condition_failure(exc):
                    raise TokensSuperseded(f"tokens of {open_id} replaced") from exc
                if not _is_transient(exc) or attempt == self.TOKEN_SAVE_ATTEMPTS - 1:
                    raise
                error: Exception = exc
            except (BotoConnectionError, HTTPClientError) as exc:
                if attempt == self.TOKEN_SAVE_ATTEMPTS - 1:
                    raise
                error = exc
            logger.warning("token_save_retried", extra={"attempt": attempt + 1, "error": type(error).__name__})
            self._sleep(random.uniform(0, min(2.0, 0.1 * 2**attempt)))  # noqa: S311 - jitter
        raise AssertionError("unreachable")  # pragma: no cover

    def seal_stored_tokens(self, fence: Fence, now: int, sealed: SealedGrant, *, token_version: int) -> bool:
        """Replace plaintext tokens (written before encryption) with the same tokens sealed; under the lease
        and only while no new authorisation replaced them (``token_version``). False when one did."""
        refresh = ", refresh_token = :rt" if sealed.refresh_token else ""
        values: dict[str, Any] = {":at": sealed.access_token, ":v": token_version, ":owner": fence.owner, ":now": now}
        if sealed.refresh_token:
            values[":rt"] = sealed.refresh_token
        unchanged = (
            "token_version = :v" if token_version else "(attribute_not_exists(token_version) OR token_version = :v)"
        )
        done = self._update(
            fence.open_id,
            f"SET access_token = :at{refresh}, tokens_sealed_at = :now",
            values,
            condition=f"{self._FENCE} AND {unchanged}",
        )
        return done is not None

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
        calendars_reduced: int = 0,
    ) -> None:
        """After the last page: store the new ``sync_token`` and drop the checkpoint."""
        sets = ["calendars_mirrored = :n", "calendars_reduced = :r", "last_sync_kind = :kind"]
        removes = ["checkpoint"]
        values: dict[str, Any] = {":n": calendars_mirrored, ":r": calendars_reduced, ":kind": kind}
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
        calendars and events are stored reduced (both for health).
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
        if held_event_deletions:
            sets.append("held_event_deletions = :held")
            values[":held"] = held_event_deletions
        else:
            removes.append("held_event_deletions")
        if items_reduced:
            sets.append("items_reduced = :reduced")
            values[":reduced"] = items_reduced
        else:
            removes.append("items_reduced")
        expression = f"SET {', '.join(sets)} REMOVE {', '.join(removes)}"
        if handled_calendars:
            expression += " DELETE dirty_calendars :handled"
            values[":handled"] = set(handled_calendars)
        try:
            self._client.update_item(
                TableName=self.table_name,
                Key={"open_id": _av(fence.open_id)},
                UpdateExpression=expression,
                ConditionExpression="lease_owner = :owner AND dirty_seq = :seen",
                ExpressionAttributeValues=attribute_values(values),
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
        done = self._update(
            fence.open_id,
            f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            values,
            condition="lease_owner = :owner AND token_version = :v",
            names={"#status": "status"},
        )
        return done is not None

    def count_awaiting_reauth(self) -> int:
        """How many users must authorise again (a COUNT query of the status index: their keys only)."""
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#s = :reauth",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": attribute_values({":reauth": REAUTH_REQUIRED}),
            "Select": "COUNT",
        }
        total = 0
        while True:
            page = self._client.query(**request)
            total += page.get("Count", 0)
            if "LastEvaluatedKey" not in page:
                return total
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

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


# ------------------------------------------------------------------------------ mirror tables
def _fence_check(users_table: str, fence: Fence, now: int) -> TransactWriteItemTypeDef:
    """The transaction item that proves ``fence`` still holds the user's lease."""
    return {
        "ConditionCheck": {
            "TableName": users_table,
            "Key": {"open_id": _av(fence.open_id)},
            "ConditionExpression": UserStore._FENCE,
            "ExpressionAttributeValues": attribute_values({":owner": fence.owner, ":now": now}),
        }
    }


def _transact(
    client: DynamoDBClient, fence: Fence, items: list[TransactWriteItemTypeDef], sleep: Callable[[float], None]
) -> None:
    """One fenced transaction (its first item is the lease check), retried on conflicts and throttling."""
    for attempt in range(6):
        try:
            client.transact_write_items(TransactItems=items)
            return
        except ClientError as exc:
            error = exc.response.get("Error", {}).get("Code")
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if error == "TransactionCanceledException" and reasons and reasons[0] == "ConditionalCheckFailed":
                raise LeaseLost(f"lease on {fence.open_id} lost") from exc
            retryable = error in ("TransactionCanceledException", "TransactionConflictException", "ThrottlingException")
            if not retryable or attempt == 5:
                raise
            sleep(random.uniform(0, 0.05 * 2**attempt))  # noqa: S311 - jitter


class MirrorTable[T: (Calendar, Event)]:
    """A table of mirrored Feishu items: one partition per collection, one item per Feishu id.

    Subclasses say how a collection maps to a partition (``CalendarStore``: the user's calendars;
    ``EventStore``: one calendar's events as that user sees them). Items hold the Feishu fields by
    Feishu name, ``mirrored_at`` (ms) and, for tombstones, ``deleted_at`` and the TTL ``expires_at``.
    """

    partition_attribute: str
    sort_attribute: str
    field_types: Mapping[str, type]

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

    def _make(self, key: str, fields: dict[str, FieldValue], reduced: dict[str, str]) -> T:
        raise NotImplementedError

    def _derived(self, open_id: str, item: T) -> dict[str, Any]:  # noqa: ARG002 - a hook for subclasses
        """Attributes computed from a live item's fields and written with it (none by default)."""
        return {}

    def _stored(self, item: Mapping[str, Any]) -> Stored[T]:
        raw = plain(item)
        fields: dict[str, FieldValue] = {name: raw[name] for name in self.field_types if name in raw}
        marker = raw.get(REDUCED_ATTRIBUTE)
        reduced = {str(name): str(why) for name, why in marker.items()} if isinstance(marker, dict) else {}
        return Stored(self._make(str(raw[self.sort_attribute]), fields, reduced), raw.get("deleted_at"))

    def _query(self, request: dict[str, Any]) -> dict[str, Stored[T]]:
        """Every item a Query finds (all its pages), by key."""
        found: dict[str, Stored[T]] = {}
        while True:
            page = self._client.query(**request)
            for item in page.get("Items", []):
                stored = self._stored(item)
                found[stored.item.key] = stored
            if "LastEvaluatedKey" not in page:
                return found
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _load_all(self, partition: str) -> dict[str, Stored[T]]:
        return self._query(
            {
                "TableName": self.table_name,
                "KeyConditionExpression": "#p = :p",
                "ExpressionAttributeNames": {"#p": self.partition_attribute},
                "ExpressionAttributeValues": attribute_values({":p": partition}),
                "ConsistentRead": True,
            }
        )

    def _load_some(self, partition: str, keys: Iterable[str]) -> dict[str, Stored[T]]:
        wanted = sorted(set(keys))
        found: dict[str, Stored[T]] = {}
        for start in range(0, len(wanted), BATCH_GET_KEYS):
            batch = [
                {self.partition_attribute: _av(partition), self.sort_attribute: _av(key)}
                for key in wanted[start : start + BATCH_GET_KEYS]
            ]
            request: dict[str, Any] = {self.table_name: {"Keys": batch, "ConsistentRead": True}}
            for attempt in range(8):
                response = self._client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table_name, []):
                    stored = self._stored(item)
                    found[stored.item.key] = stored
                request = dict(response.get("UnprocessedKeys") or {})
                if not request:
                    break
                self._sleep(random.uniform(0, 0.05 * 2**attempt))  # noqa: S311 - jitter
            else:
                raise RuntimeError("BatchGetItem kept returning unprocessed keys")
        return found

    def _apply(
        self,
        fence: Fence,
        now: int,
        partition: str,
        *,
        extra: Mapping[str, Any],
        upserts: Sequence[T],
        deletions: Sequence[T],
    ) -> int:
        now_ms = int(now * 1000)
        base = {**extra, self.partition_attribute: partition}
        tombstone = {"deleted_at": now, "expires_at": now + self._tombstone_ttl}
        puts: list[dict[str, Any]] = [
            {
                **item.fields,
                **({REDUCED_ATTRIBUTE: dict(item.reduced)} if item.reduced else {}),
                **(tombstone if deleted else self._derived(fence.open_id, item)),
                **base,
                self.sort_attribute: item.key,
                "mirrored_at": now_ms,
            }
            for items, deleted in ((upserts, False), (deletions, True))
            for item in items
        ]
        # Each transaction: the lease check and up to 99 items, of at most TRANSACTION_BYTES by estimate.
        chunk: list[dict[str, Any]] = []
        chunk_bytes = 0
        for fields in puts:
            put, size = stored_form(fields)
            if chunk and (len(chunk) == TRANSACTION_ITEMS - 1 or chunk_bytes + size > TRANSACTION_BYTES):
                self._put_all(fence, now, chunk)
                chunk, chunk_bytes = [], 0
            chunk.append(put)
            chunk_bytes += size
        if chunk:
            self._put_all(fence, now, chunk)
        return len(puts)

    def _put_all(self, fence: Fence, now: int, puts: Sequence[Mapping[str, Any]]) -> None:
        """One fenced transaction putting these items."""
        items: list[TransactWriteItemTypeDef] = [_fence_check(self._users_table, fence, now)]
        items += [{"Put": {"TableName": self.table_name, "Item": attribute_values(put)}} for put in puts]
        self.write_requests += 1
        _transact(self._client, fence, items, self._sleep)


class CalendarStore(MirrorTable[Calendar]):
    """The calendars table: partition ``open_id``, sort ``calendar_id``, Feishu fields by name."""

    partition_attribute = "open_id"
    sort_attribute = "calendar_id"
    field_types = CALENDAR_FIELDS

    def _make(self, key: str, fields: dict[str, FieldValue], reduced: dict[str, str]) -> Calendar:
        return Calendar(key, fields, reduced)

    def load_all(self, open_id: str) -> dict[str, Stored[Calendar]]:
        """Every item of the user, tombstones included (strongly consistent)."""
        return self._load_all(open_id)

    def load_some(self, open_id: str, calendar_ids: Iterable[str]) -> dict[str, Stored[Calendar]]:
        """The items for these calendar ids that exist (BatchGetItem, strongly consistent)."""
        return self._load_some(open_id, calendar_ids)

    def apply(
        self, fence: Fence, now: int, *, upserts: Sequence[Calendar] = (), deletions: Sequence[Calendar] = ()
    ) -> int:
        """Write changed calendars and tombstones, fenced by the user's lease; returns items written.

        Each transaction holds up to 99 items plus a check that ``fence`` still owns the lease.
        Raises ``LeaseLost`` when it does not.
        """
        return self._apply(fence, now, fence.open_id, extra={}, upserts=upserts, deletions=deletions)


_MASTER_ID = re.compile(r"(.+_)\d+", re.DOTALL)  # Feishu's <uid>_<start>; group 1 is what its exceptions begin with


def calendar_key(open_id: str, calendar_id: str) -> str:
    """The events table's partition key: one calendar's events as one user sees them."""
    return f"{open_id}#{calendar_id}"


class EventStore(MirrorTable[Event]):
    """The events table: partition ``calendar_key`` (``<open_id>#<calendar_id>``), sort ``event_id``.

    Items also carry plain ``open_id`` and ``calendar_id`` attributes for consumers.
    """

    partition_attribute = "calendar_key"
    sort_attribute = "event_id"
    field_types = EVENT_FIELDS

    def _make(self, key: str, fields: dict[str, FieldValue], reduced: dict[str, str]) -> Event:
        return Event(key, fields, reduced)

    def _derived(self, open_id: str, item: Event) -> dict[str, Any]:
        """The agenda index's attributes (``agenda.agenda_index_attributes``); tombstones get none."""
        from feishu_mirror.agenda import agenda_index_attributes  # noqa: PLC0415 - keeps dateutil off the callback's path

        return agenda_index_attributes(open_id, item.event_id, item.fields)

    def load_all(self, open_id: str, calendar_id: str) -> dict[str, Stored[Event]]:
        """Every event item of the calendar, tombstones included (strongly consistent)."""
        return self._load_all(calendar_key(open_id, calendar_id))

    def load_some(self, open_id: str, calendar_id: str, event_ids: Iterable[str]) -> dict[str, Stored[Event]]:
        """The items for these event ids that exist (BatchGetItem, strongly consistent)."""
        return self._load_some(calendar_key(open_id, calendar_id), event_ids)

    def load_exceptions(self, open_id: str, calendar_id: str, master_ids: Iterable[str]) -> dict[str, Stored[Event]]:
        """The stored exceptions (tombstones included) of these recurring events' masters.

        Feishu's ids are ``<uid>_0`` for a master and ``<uid>_<original start>`` for its exceptions, so
        one Query per master reads only ids that begin with ``<uid>_``; ``recurring_event_id`` decides.
        A master id of another shape costs a Query of the whole calendar.
        """
        found: dict[str, Stored[Event]] = {}
        for master_id in sorted(set(master_ids)):
            request: dict[str, Any] = {
                "TableName": self.table_name,
                "KeyConditionExpression": "#p = :p",
                "FilterExpression": "#r = :m",
                "ExpressionAttributeNames": {"#p": self.partition_attribute, "#r": "recurring_event_id"},
                "ExpressionAttributeValues": attribute_values(
                    {":p": calendar_key(open_id, calendar_id), ":m": master_id}
                ),
                "ConsistentRead": True,
            }
            shape = _MASTER_ID.fullmatch(master_id)
            if shape:
                request["KeyConditionExpression"] += " AND begins_with(#k, :uid)"
                request["ExpressionAttributeNames"]["#k"] = self.sort_attribute
                request["ExpressionAttributeValues"][":uid"] = _av(shape.group(1))
            found |= {key: s for key, s in self._query(request).items() if s.item.master_id == master_id}
        return found

    def apply(
        self,
        fence: Fence,
        now: int,
        calendar_id: str,
        *,
        upserts: Sequence[Event] = (),
        deletions: Sequence[Event] = (),
    ) -> int:
        """Write changed events and tombstones of one calendar, fenced by the user's lease."""
        extra = {"open_id": fence.open_id, "calendar_id": calendar_id}
        return self._apply(
            fence, now, calendar_key(fence.open_id, calendar_id), extra=extra, upserts=upserts, deletions=deletions
        )


# ------------------------------------------------------------------------------ event listings
def encode_ids(ids: Iterable[str]) -> bytes:
    """A set of ids, compressed (a checkpoint of a 5,000-event listing stays far below 400 KB)."""
    return zlib.compress("\n".join(sorted(ids)).encode("utf-8"))


def decode_ids(blob: bytes) -> frozenset[str]:
    """The inverse of ``encode_ids``."""
    text = zlib.decompress(blob).decode("utf-8")
    return frozenset(text.split("\n")) if text else frozenset()


def _listing(item: Mapping[str, Any]) -> EventListing:
    raw = plain(item)
    checkpoint = None
    cp = raw.get("checkpoint")
    if isinstance(cp, dict) and cp.get("kind") in ("full", "incremental"):
        seen = cp.get("seen")
        checkpoint = Checkpoint(
            kind=cp["kind"],
            page_token=str(cp.get("page_token", "")),
            seen_ids=decode_ids(bytes(seen)) if seen is not None else frozenset(),
            started_at=int(cp.get("started_at", 0)),
        )
    held = raw.get("held_sweep")
    return EventListing(
        calendar_id=str(raw["calendar_id"]),
        state=ListingState(
            sync_token=raw.get("sync_token"),
            checkpoint=checkpoint,
            held_sweep=HeldSweep(int(held["count"]), int(held["first_seen_at"])) if isinstance(held, dict) else None,
            mirrored=int(raw.get("events_mirrored", 0)),
            reduced=int(raw.get("events_reduced", 0)),
        ),
        synced_at=raw.get("synced_at"),
        subscribed_at=raw.get("subscribed_at"),
    )


class EventListingStore:
    """The event-listings table: partition ``open_id``, sort ``calendar_id``; each calendar's event
    listing state. Every write is a transaction with the user's lease check."""

    def __init__(
        self, client: DynamoDBClient, table_name: str, users_table: str, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._client = client
        self.table_name = table_name
        self._users_table = users_table
        self._sleep = sleep

    def load_all(self, open_id: str) -> dict[str, EventListing]:
        """Every calendar's event-listing state of the user (strongly consistent)."""
        found: dict[str, EventListing] = {}
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "open_id = :o",
            "ExpressionAttributeValues": attribute_values({":o": open_id}),
            "ConsistentRead": True,
        }
        while True:
            page = self._client.query(**request)
            for item in page.get("Items", []):
                listing = _listing(item)
                found[listing.calendar_id] = listing
            if "LastEvaluatedKey" not in page:
                return found
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    SUMMARY_ATTRIBUTES = (
        "calendar_id",
        "events_mirrored",
        "events_reduced",
        "synced_at",
        "subscribed_at",
        "held_sweep",
        "last_sync_kind",
    )

    def summaries(self, open_id: str) -> dict[str, dict[str, Any]]:
        """For operators: each calendar's event counts and times, by calendar id. A projected read,
        so sync tokens and checkpoints never leave DynamoDB on this path."""
        names = {f"#a{n}": name for n, name in enumerate(self.SUMMARY_ATTRIBUTES)}
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "open_id = :o",
            "ProjectionExpression": ", ".join(names),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": attribute_values({":o": open_id}),
        }
        found: dict[str, dict[str, Any]] = {}
        while True:
            page = self._client.query(**request)
            for item in page.get("Items", []):
                summary = plain(item)
                found[str(summary.pop("calendar_id"))] = summary
            if "LastEvaluatedKey" not in page:
                return found
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get(self, open_id: str, calendar_id: str) -> EventListing | None:
        """One calendar's event-listing state (strongly consistent), or None."""
        item = self._client.get_item(
            TableName=self.table_name,
            Key={"open_id": _av(open_id), "calendar_id": _av(calendar_id)},
            ConsistentRead=True,
        ).get("Item")
        return _listing(item) if item else None

    def _fenced_update(
        self, fence: Fence, now: int, calendar_id: str, expression: str, values: Mapping[str, Any]
    ) -> None:
        update: UpdateTypeDef = {
            "TableName": self.table_name,
            "Key": {"open_id": _av(fence.open_id), "calendar_id": _av(calendar_id)},
            "UpdateExpression": expression,
        }
        if values:
            update["ExpressionAttributeValues"] = attribute_values(values)
        _transact(self._client, fence, [_fence_check(self._users_table, fence, now), {"Update": update}], self._sleep)

    def begin(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Record a calendar's first listing before any of its events is written, so that whatever
        happens to that listing, the calendar's events are retired when it leaves the user's list."""
        self._fenced_update(fence, now, calendar_id, "SET created_at = if_not_exists(created_at, :now)", {":now": now})

    def save_checkpoint(self, fence: Fence, now: int, calendar_id: str, checkpoint: Checkpoint) -> bool:
        """Remember how far the calendar's event listing got; False when it is too big to keep.

        A full listing of a very large calendar (roughly 10,000 events and more) has seen more ids than
        fit in an item; it then keeps no checkpoint and, if cut short, starts again from the top.
        """
        seen = encode_ids(checkpoint.seen_ids)
        if len(seen) > MAX_CHECKPOINT_BYTES:
            logger.warning("checkpoint_too_large", extra={"calendar_id": calendar_id, "bytes": len(seen)})
            return False
        self._fenced_update(
            fence,
            now,
            calendar_id,
            "SET checkpoint = :cp",
            {
                ":cp": {
                    "kind": checkpoint.kind,
                    "page_token": checkpoint.page_token,
                    "seen": seen,
                    "started_at": checkpoint.started_at,
                }
            },
        )
        return True

    def commit_listing(
        self,
        fence: Fence,
        now: int,
        calendar_id: str,
        *,
        sync_token: str | None,
        mirrored: int,
        kind: str,
        held_sweep: HeldSweep | None,
        reset: bool,
        reduced: int = 0,
    ) -> None:
        """After the last page: store the new ``sync_token`` and drop the checkpoint."""
        sets = ["events_mirrored = :n", "events_reduced = :r", "last_sync_kind = :kind", "synced_at = :now"]
        removes = ["checkpoint"]
        values: dict[str, Any] = {":n": mirrored, ":r": reduced, ":kind": kind, ":now": now}
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
        self._fenced_update(fence, now, calendar_id, f"SET {', '.join(sets)} REMOVE {', '.join(removes)}", values)

    def discard_sync_state(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Forget the calendar's events sync token and checkpoint (after 190008)."""
        self._fenced_update(fence, now, calendar_id, "REMOVE sync_token, checkpoint", {})

    def mark_subscribed(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Record that the calendar's event-change subscription was (re)asserted."""
        self._fenced_update(fence, now, calendar_id, "SET subscribed_at = :now", {":now": now})

    def delete(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Forget a calendar that left the user's list (after its events were tombstoned)."""
        delete: DeleteTypeDef = {
            "TableName": self.table_name,
            "Key": {"open_id": _av(fence.open_id), "calendar_id": _av(calendar_id)},
        }
        _transact(self._client, fence, [_fence_check(self._users_table, fence, now), {"Delete": delete}], self._sleep)


# ----------------------------------------------------------------------------------- OAuth state
class OAuthStateStore:
    """The OAuth state table: the nonces of signed states already used (``feishu_mirror.oauth_state``),
    each until its state expires (TTL). Only the callback writes, once per state this app issued."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self.table_name = table_name

    def claim(self, nonce: str, expires_at: int) -> bool:
        """Mark a state used; False when it already was (a replayed callback)."""
        try:
            self._client.put_item(
                TableName=self.table_name,
                Item=attribute_values({"state": nonce, "expires_at": expires_at}),
                ConditionExpression="attribute_not_exists(#s)",
                ExpressionAttributeNames={"#s": "state"},
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True


# ------------------------------------------------------------------------------------ rate gate
class DynamoRateGate:
    """A request scheduler per Feishu API, shared by every Lambda container.

    Feishu limits each API (method and path template) on its own, per app and tenant, in two windows
    (1,000/min and 50/s for the calendar APIs), so each API has its own item, ``<bucket>|<api>``, holding
    the theoretical time of its next request (a generic cell rate algorithm). A request reserves a slot
    with one conditional update: slots are ``60 s / requests_per_minute`` apart, and up to ``burst``
    requests may go early after a quiet spell. In any window of ``w`` seconds an API therefore starts at
    most ``w · rate + burst + 1`` requests, whatever the concurrency: at 950/min and a burst of 10, 961 a
    minute and 26 a second, under Feishu's limits with room for clock skew and network jitter. A caller
    whose slot lies beyond its deadline raises ``DeadlineExceeded`` (the slot is wasted, which only
    makes the gate more conservative).
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        bucket: str,
        *,
        requests_per_minute: int = 950,
        burst: int = 10,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._table = table_name
        self._bucket = bucket
        self._interval_us = 60_000_000 // requests_per_minute
        self._tolerance_us = burst * self._interval_us
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        # The last next-slot time seen per API: says which of the two updates will most likely succeed,
        # so a steady stream and a quiet API each cost one update per request.
        self._last_seen_us: dict[str, int] = {}
        self.waited_seconds = 0.0

    def acquire(self, api: str, deadline: float) -> None:
        """Reserve the next slot of ``api`` and sleep until it comes; raises ``DeadlineExceeded``."""
        slot_us = self._reserve(api)
        wait = slot_us / 1_000_000 - self._clock()
        if wait <= 0:
            return
        if self._monotonic() + wait >= deadline:
            raise DeadlineExceeded(f"the Feishu rate gate has no slot for {api} before the deadline")
        self.waited_seconds += wait
        self._sleep(wait)

    def _reserve(self, api: str) -> int:
        """The start time (µs since the epoch) of the slot reserved for one request to ``api``."""
        key = {"bucket": _av(f"{self._bucket}|{api}")}
        for _ in range(20):
            now_us = int(self._clock() * 1_000_000)
            ttl = now_us // 1_000_000 + 86400
            busy_first = self._last_seen_us.get(api, 0) > now_us
            for busy in (busy_first, not busy_first):
                try:
                    if busy:  # requests are queued: take the slot after the last one handed out
                        response = self._client.update_item(
                            TableName=self._table,
                            Key=key,
                            UpdateExpression="SET next_at = next_at + :i, expires_at = :ttl",
                            ConditionExpression="next_at > :now",
                            ExpressionAttributeValues=attribute_values(
                                {":i": self._interval_us, ":now": now_us, ":ttl": ttl}
                            ),
                            ReturnValues="UPDATED_NEW",
                        )
                        next_at = int(plain(response["Attributes"])["next_at"])
                        self._last_seen_us[api] = next_at
                        return max(now_us, next_at - self._interval_us - self._tolerance_us)
                    # the API is quiet: the slot is now
                    self._client.update_item(
                        TableName=self._table,
                        Key=key,
                        UpdateExpression="SET next_at = :next, expires_at = :ttl",
                        ConditionExpression="attribute_not_exists(next_at) OR next_at <= :now",
                        ExpressionAttributeValues=attribute_values(
                            {":next": now_us + self._interval_us, ":now": now_us, ":ttl": ttl}
                        ),
                    )
                    self._last_seen_us[api] = now_us + self._interval_us
                    return now_us
                except ClientError as exc:
                    if not _is_condition_failure(exc):
                        raise
        raise RuntimeError(f"could not reserve a Feishu request slot for {api}")
