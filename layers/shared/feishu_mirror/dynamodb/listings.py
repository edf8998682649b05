"""The listing state of every mirrored collection, kept one way for all of them.

A listing's state is its ``sync_token``, the checkpoint of an unfinished listing (its kind, page
token, the ids seen so far compressed, when it started), a held sweep, the live and reduced item
counts, the last listing's kind and how many full relistings 190008 forced. The user's calendar list
keeps it on the user's item (``calendars_mirrored``, ``calendars_reduced``); each calendar's events keep
it in the event-listings table (partition ``open_id``, sort ``calendar_id``: ``events_mirrored``,
``events_reduced``, ``synced_at``, ``subscribed_at``). Every write is fenced by the user's lease
(``fencing``): an UpdateItem of the user's item, a transaction elsewhere.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from feishu_mirror.dynamodb.calls import query_items
from feishu_mirror.dynamodb.fencing import FencedWrites
from feishu_mirror.dynamodb.values import attribute_value, attribute_values, plain
from feishu_mirror.models import (
    Checkpoint,
    CollectionId,
    EventListing,
    Fence,
    HeldSweep,
    ListingOutcome,
    ListingState,
)
from feishu_mirror.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, DeleteTypeDef

MAX_CHECKPOINT_BYTES = 200_000  # of compressed ids; DynamoDB items hold 400 KB


# ------------------------------------------------------------------------------ encoding
def encode_ids(ids: Iterable[str]) -> bytes:
    """A set of ids, compressed (a checkpoint of a 5,000-event listing stays far below 400 KB)."""
    return zlib.compress("\n".join(sorted(ids)).encode("utf-8"))


def decode_ids(blob: bytes) -> frozenset[str]:
    """The inverse of ``encode_ids``."""
    text = zlib.decompress(blob).decode("utf-8")
    return frozenset(text.split("\n")) if text else frozenset()


def decode_checkpoint(raw: Any) -> Checkpoint | None:
    """A stored checkpoint: its seen ids compressed (``seen``), or as a list (``seen_ids``, as the calendar
    list stored them before); None for anything else."""
    if not isinstance(raw, dict) or raw.get("kind") not in ("full", "incremental"):
        return None
    seen = raw.get("seen")
    return Checkpoint(
        kind=raw["kind"],
        page_token=str(raw.get("page_token", "")),
        seen_ids=decode_ids(bytes(seen)) if seen is not None else frozenset(str(i) for i in raw.get("seen_ids", [])),
        started_at=int(raw.get("started_at", 0)),
    )


def decode_held_sweep(raw: Any) -> HeldSweep | None:
    """A stored held sweep, or None."""
    return HeldSweep(int(raw["count"]), int(raw["first_seen_at"])) if isinstance(raw, dict) else None


@dataclass(frozen=True, slots=True)
class _Counts:
    """The attributes holding a collection's live and reduced item counts."""

    mirrored: str
    reduced: str


CALENDAR_LIST_COUNTS = _Counts("calendars_mirrored", "calendars_reduced")
EVENT_COUNTS = _Counts("events_mirrored", "events_reduced")


def decode_state(raw: Mapping[str, Any], *, calendar_list: bool) -> ListingState:
    """A collection's listing state from its item (plain values): the user's, or an event listing's."""
    counts = CALENDAR_LIST_COUNTS if calendar_list else EVENT_COUNTS
    return ListingState(
        sync_token=raw.get("sync_token"),
        checkpoint=decode_checkpoint(raw.get("checkpoint")),
        held_sweep=decode_held_sweep(raw.get("held_sweep")),
        mirrored=int(raw.get(counts.mirrored, 0)),
        reduced=int(raw.get(counts.reduced, 0)),
    )


def _event_listing(item: Mapping[str, Any]) -> EventListing:
    raw = plain(item)
    return EventListing(
        calendar_id=str(raw["calendar_id"]),
        state=decode_state(raw, calendar_list=False),
        synced_at=raw.get("synced_at"),
        subscribed_at=raw.get("subscribed_at"),
    )


# ------------------------------------------------------------------------------ the adapter
class ListingStates:
    """Where each collection's listing stands (see the module docstring); every write under the lease.

    Without an event-listings table (events not mirrored) only the calendar list has a state.
    """

    SUMMARY_ATTRIBUTES = (
        "calendar_id",
        "events_mirrored",
        "events_reduced",
        "synced_at",
        "subscribed_at",
        "held_sweep",
        "last_sync_kind",
    )

    def __init__(self, client: DynamoDBClient, fenced: FencedWrites, event_listings_table: str = "") -> None:
        self._client = client
        self._fenced = fenced
        self.table_name = event_listings_table

    def _key(self, open_id: str, calendar_id: str) -> dict[str, AttributeValueTypeDef]:
        return {"open_id": attribute_value(open_id), "calendar_id": attribute_value(calendar_id)}

    def _write(
        self, fence: Fence, now: int, collection: CollectionId, expression: str, values: Mapping[str, Any]
    ) -> None:
        """One fenced update of the collection's state: the user's item, or its event listing."""
        if collection.calendar_id is None:
            self._fenced.update_user(fence, now, expression, values)
        else:
            key = self._key(fence.open_id, collection.calendar_id)
            self._fenced.update(fence, now, table=self.table_name, key=key, expression=expression, values=values)

    # -------------------------------------------------------------- every collection
    def save_checkpoint(self, fence: Fence, now: int, collection: CollectionId, checkpoint: Checkpoint) -> bool:
        """Remember how far the listing got; False when it is too big to keep.

        A full listing of a very large calendar (roughly 10,000 events and more) has seen more ids than
        fit in an item; it then keeps no checkpoint and, if cut short, starts again from the top.
        """
        seen = encode_ids(checkpoint.seen_ids)
        if len(seen) > MAX_CHECKPOINT_BYTES:
            logger.warning("checkpoint_too_large", extra={"calendar_id": collection.calendar_id, "bytes": len(seen)})
            return False
        stored = {"kind": checkpoint.kind, "page_token": checkpoint.page_token, "seen": seen}
        self._write(
            fence, now, collection, "SET checkpoint = :cp", {":cp": {**stored, "started_at": checkpoint.started_at}}
        )
        return True

    def commit(self, fence: Fence, now: int, collection: CollectionId, outcome: ListingOutcome) -> None:
        """After the last page: the new ``sync_token`` (or none), the counts and the held sweep; the
        checkpoint goes."""
        counts = CALENDAR_LIST_COUNTS if collection.is_calendar_list else EVENT_COUNTS
        sets = [f"{counts.mirrored} = :n", f"{counts.reduced} = :r", "last_sync_kind = :kind"]
        values: dict[str, Any] = {":n": outcome.mirrored, ":r": outcome.reduced, ":kind": outcome.kind}
        removes = ["checkpoint"]
        if not collection.is_calendar_list:
            sets.append("synced_at = :synced")
            values[":synced"] = now
        if outcome.sync_token:
            sets.append("sync_token = :st")
            values[":st"] = outcome.sync_token
        else:
            removes.append("sync_token")
        if outcome.held:
            sets.append("held_sweep = :held")
            values[":held"] = {"count": outcome.held.count, "first_seen_at": outcome.held.first_seen_at}
        else:
            removes.append("held_sweep")
        if outcome.reset:
            sets.append("full_resync_count = if_not_exists(full_resync_count, :zero) + :one")
            values |= {":zero": 0, ":one": 1}
        self._write(fence, now, collection, f"SET {', '.join(sets)} REMOVE {', '.join(removes)}", values)

    def discard_sync_state(self, fence: Fence, now: int, collection: CollectionId) -> None:
        """Forget the sync token and checkpoint (after 190008), so the next listing is a full one."""
        self._write(fence, now, collection, "REMOVE sync_token, checkpoint", {})

    # -------------------------------------------------------------- each calendar's events
    def event_listings(self, open_id: str) -> dict[str, EventListing]:
        """Every calendar's event-listing state of the user (strongly consistent)."""
        request = {
            "TableName": self.table_name,
            "KeyConditionExpression": "open_id = :o",
            "ExpressionAttributeValues": attribute_values({":o": open_id}),
            "ConsistentRead": True,
        }
        listings = (_event_listing(item) for item in query_items(self._client, request))
        return {listing.calendar_id: listing for listing in listings}

    def event_listing(self, open_id: str, calendar_id: str) -> EventListing | None:
        """One calendar's event-listing state (strongly consistent), or None."""
        item = self._client.get_item(
            TableName=self.table_name, Key=self._key(open_id, calendar_id), ConsistentRead=True
        ).get("Item")
        return _event_listing(item) if item else None

    def begin_events(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Record a calendar's first listing before any of its events is written, so that whatever
        happens to that listing, the calendar's events are retired when it leaves the user's list."""
        collection = CollectionId(fence.open_id, calendar_id)
        self._write(fence, now, collection, "SET created_at = if_not_exists(created_at, :now)", {":now": now})

    def mark_events_subscribed(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Record that the calendar's event-change subscription was (re)asserted."""
        self._write(fence, now, CollectionId(fence.open_id, calendar_id), "SET subscribed_at = :now", {":now": now})

    def retire_events(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Forget a calendar that left the user's list (after its events were tombstoned)."""
        delete: DeleteTypeDef = {"TableName": self.table_name, "Key": self._key(fence.open_id, calendar_id)}
        self._fenced.transact(fence, now, [{"Delete": delete}])

    def summaries(self, open_id: str) -> dict[str, dict[str, Any]]:
        """For operators: each calendar's event counts and times, by calendar id. A projected read, so
        sync tokens and checkpoints never leave DynamoDB on this path."""
        names = {f"#a{n}": name for n, name in enumerate(self.SUMMARY_ATTRIBUTES)}
        request = {
            "TableName": self.table_name,
            "KeyConditionExpression": "open_id = :o",
            "ProjectionExpression": ", ".join(names),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": attribute_values({":o": open_id}),
        }
        found: dict[str, dict[str, Any]] = {}
        for item in query_items(self._client, request):
            summary = plain(item)
            found[str(summary.pop("calendar_id"))] = summary
        return found
