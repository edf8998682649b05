"""The mirror tables: the user's calendars (partition ``open_id``, sort ``calendar_id``) and each
calendar's events as that user sees them (partition ``calendar_key`` = ``<open_id>#<calendar_id>``,
sort ``event_id``; items also carry plain ``open_id`` and ``calendar_id``).

Items hold the Feishu fields by Feishu name (as ``storable`` keeps them; the dropped ones named in
``mirror_reduced``), ``mirrored_at`` (ms) and, for tombstones, ``deleted_at`` and the TTL ``expires_at``.
Writes are fenced transactions (``fencing``) of up to 99 items and ~3.5 MB by estimate.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from feishu_mirror.dynamodb.calls import batch_get, query_items
from feishu_mirror.dynamodb.fencing import FencedWrites
from feishu_mirror.dynamodb.values import attribute_value, attribute_values, plain
from feishu_mirror.models import (
    CALENDAR_FIELDS,
    EVENT_FIELDS,
    Calendar,
    CollectionId,
    Event,
    Fence,
    FieldValue,
    Stored,
)
from feishu_mirror.storable import REDUCED_ATTRIBUTE, stored_form

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

TRANSACTION_ITEMS = 100  # DynamoDB's limit; one slot is the lease check
TRANSACTION_BYTES = 3_500_000  # by estimate, of DynamoDB's 4 MB limit on a transaction's items
DEFAULT_TOMBSTONE_TTL = 30 * 24 * 3600


def calendar_key(open_id: str, calendar_id: str) -> str:
    """The events table's partition key: one calendar's events as one user sees them."""
    return f"{open_id}#{calendar_id}"


class MirrorTable[T: (Calendar, Event)]:
    """A table of mirrored Feishu items: one partition per collection, one item per Feishu id.

    Subclasses say how a collection maps to a partition and how an item is made from its fields.
    """

    partition_attribute: str
    sort_attribute: str
    field_types: Mapping[str, type]

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        fenced: FencedWrites,
        *,
        tombstone_ttl_seconds: int = DEFAULT_TOMBSTONE_TTL,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self.table_name = table_name
        self._fenced = fenced
        self._tombstone_ttl = tombstone_ttl_seconds
        self._sleep = sleep
        self.write_requests = 0  # transactions sent, for benchmarks

    # -------------------------------------------------------------- what subclasses say
    def partition(self, collection: CollectionId) -> str:
        """The partition key of a collection's items."""
        raise NotImplementedError

    def _make(self, key: str, fields: dict[str, FieldValue], reduced: dict[str, str]) -> T:
        raise NotImplementedError

    def _extra(self, collection: CollectionId) -> dict[str, Any]:  # noqa: ARG002 - a hook for subclasses
        """Attributes every item of the collection carries besides its keys (none by default)."""
        return {}

    def _derived(self, open_id: str, item: T) -> dict[str, Any]:  # noqa: ARG002 - a hook for subclasses
        """Attributes computed from a live item's fields and written with it (none by default)."""
        return {}

    # -------------------------------------------------------------- reads
    def _stored(self, item: Mapping[str, Any]) -> Stored[T]:
        raw = plain(item)
        fields: dict[str, FieldValue] = {name: raw[name] for name in self.field_types if name in raw}
        marker = raw.get(REDUCED_ATTRIBUTE)
        reduced = {str(name): str(why) for name, why in marker.items()} if isinstance(marker, dict) else {}
        return Stored(self._make(str(raw[self.sort_attribute]), fields, reduced), raw.get("deleted_at"))

    def _query(self, request: Mapping[str, Any]) -> dict[str, Stored[T]]:
        """Every item a Query finds (all its pages), by key."""
        stored = (self._stored(item) for item in query_items(self._client, request))
        return {s.item.key: s for s in stored}

    def load_all(self, collection: CollectionId) -> dict[str, Stored[T]]:
        """Every item of the collection, tombstones included (strongly consistent)."""
        return self._query(
            {
                "TableName": self.table_name,
                "KeyConditionExpression": "#p = :p",
                "ExpressionAttributeNames": {"#p": self.partition_attribute},
                "ExpressionAttributeValues": attribute_values({":p": self.partition(collection)}),
                "ConsistentRead": True,
            }
        )

    def load_some(self, collection: CollectionId, keys: Iterable[str]) -> dict[str, Stored[T]]:
        """The items with these keys that exist (BatchGetItem, strongly consistent)."""
        partition = attribute_value(self.partition(collection))
        wanted = [
            {self.partition_attribute: partition, self.sort_attribute: attribute_value(k)} for k in sorted(set(keys))
        ]
        stored = (self._stored(item) for item in batch_get(self._client, self.table_name, wanted, sleep=self._sleep))
        return {s.item.key: s for s in stored}

    def load_children(self, collection: CollectionId, parent_keys: Iterable[str]) -> dict[str, Stored[T]]:
        """The stored items that belong to these (none, unless a subclass says otherwise)."""
        del collection, parent_keys
        return {}

    # -------------------------------------------------------------- writes
    def apply(
        self,
        fence: Fence,
        now: int,
        collection: CollectionId,
        *,
        upserts: Sequence[T] = (),
        deletions: Sequence[T] = (),
    ) -> int:
        """Write changed items and tombstones, fenced by the user's lease; returns the items written.

        Each transaction holds up to 99 items plus a check that ``fence`` still owns the lease.
        Raises ``LeaseLost`` when it does not.
        """
        now_ms = int(now * 1000)
        base = {**self._extra(collection), self.partition_attribute: self.partition(collection)}
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
        items: list[TransactWriteItemTypeDef] = [
            {"Put": {"TableName": self.table_name, "Item": attribute_values(put)}} for put in puts
        ]
        self.write_requests += 1
        self._fenced.transact(fence, now, items)


class CalendarStore(MirrorTable[Calendar]):
    """The calendars table: partition ``open_id``, sort ``calendar_id``, Feishu fields by name."""

    partition_attribute = "open_id"
    sort_attribute = "calendar_id"
    field_types = CALENDAR_FIELDS

    def partition(self, collection: CollectionId) -> str:
        """The user's ``open_id``."""
        return collection.open_id

    def _make(self, key: str, fields: dict[str, FieldValue], reduced: dict[str, str]) -> Calendar:
        return Calendar(key, fields, reduced)


_MASTER_ID = re.compile(r"(.+_)\d+", re.DOTALL)  # Feishu's <uid>_<start>; group 1 is what its exceptions begin with


class EventStore(MirrorTable[Event]):
    """The events table: partition ``calendar_key`` (``<open_id>#<calendar_id>``), sort ``event_id``."""

    partition_attribute = "calendar_key"
    sort_attribute = "event_id"
    field_types = EVENT_FIELDS

    def partition(self, collection: CollectionId) -> str:
        """``<open_id>#<calendar_id>``."""
        return calendar_key(collection.open_id, collection.events_of)

    def _make(self, key: str, fields: dict[str, FieldValue], reduced: dict[str, str]) -> Event:
        return Event(key, fields, reduced)

    def _extra(self, collection: CollectionId) -> dict[str, Any]:
        return {"open_id": collection.open_id, "calendar_id": collection.events_of}

    def _derived(self, open_id: str, item: Event) -> dict[str, Any]:
        """The agenda index's attributes (``agenda.agenda_index_attributes``); tombstones get none."""
        from feishu_mirror.agenda import agenda_index_attributes  # noqa: PLC0415 - keeps dateutil off the callback's path

        return agenda_index_attributes(open_id, item.event_id, item.fields)

    def load_children(self, collection: CollectionId, parent_keys: Iterable[str]) -> dict[str, Stored[Event]]:
        """The stored exceptions (tombstones included) of these recurring events' masters.

        Feishu's ids are ``<uid>_0`` for a master and ``<uid>_<original start>`` for its exceptions, so
        one Query per master reads only ids that begin with ``<uid>_``; ``recurring_event_id`` decides.
        A master id of another shape costs a Query of the whole calendar.
        """
        found: dict[str, Stored[Event]] = {}
        for master_id in sorted(set(parent_keys)):
            request: dict[str, Any] = {
                "TableName": self.table_name,
                "KeyConditionExpression": "#p = :p",
                "FilterExpression": "#r = :m",
                "ExpressionAttributeNames": {"#p": self.partition_attribute, "#r": "recurring_event_id"},
                "ExpressionAttributeValues": attribute_values({":p": self.partition(collection), ":m": master_id}),
                "ConsistentRead": True,
            }
            shape = _MASTER_ID.fullmatch(master_id)
            if shape:
                request["KeyConditionExpression"] += " AND begins_with(#k, :uid)"
                request["ExpressionAttributeNames"]["#k"] = self.sort_attribute
                request["ExpressionAttributeValues"][":uid"] = attribute_value(shape.group(1))
            found |= {key: s for key, s in self._query(request).items() if s.item.master_id == master_id}
        return found
