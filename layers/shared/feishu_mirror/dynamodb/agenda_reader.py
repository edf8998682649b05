"""The read side's DynamoDB reads (``agenda.AgendaSource``): read-only, projected, one user at a time.

- the user's sync state: one GetItem of the users table projecting ``open_id``, ``status`` and
  ``last_success_at`` (never a token);
- the user's live calendars: one Query of the calendars table (the user's partition);
- events: Queries of the Events table's ``agenda-index`` GSI, one user's ``short`` or ``long`` partition
  between two ``agenda_at`` values (``agenda.py`` explains the index). The index projects only the keys
  and ``agenda_entry`` (what the agenda shows, as one JSON string), so a query reads a fraction of each
  item and parses three attributes of it, not a few dozen.

Every read asks for ``ReturnConsumedCapacity``; ``consumed`` adds up the read units and ``items_read``
the items the queries examined (for benchmarks and tests).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from feishu_mirror.agenda import AGENDA_INDEX, Segment
from feishu_mirror.dynamodb.calls import query_pages
from feishu_mirror.dynamodb.values import attribute_values, plain
from feishu_mirror.models import CALENDAR_FIELDS

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

# What the agenda reads of an event through the index (the template's INCLUDE projection, plus keys).
AGENDA_PROJECTION = ("calendar_key", "event_id", "agenda_entry")
SYNC_STATE = ("open_id", "status", "last_success_at")


def _names(attributes: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    names = {f"#p{n}": name for n, name in enumerate(attributes)}
    return ", ".join(names), names


def _entry(item: Mapping[str, Any]) -> dict[str, Any]:
    """An index item as the agenda reads it: the fields kept in ``agenda_entry``, the ids, and the
    calendar (the partition key's part after ``<open_id>#``)."""
    try:
        fields = json.loads(str(item.get("agenda_entry") or "{}"))
    except ValueError:
        fields = {}
    return {
        **(fields if isinstance(fields, dict) else {}),
        "event_id": item.get("event_id", ""),
        "calendar_id": str(item.get("calendar_key", "")).partition("#")[2],
    }


class AgendaReader:
    """The read side's DynamoDB adapter: users, calendars and the events' agenda index."""

    def __init__(self, client: DynamoDBClient, *, users_table: str, calendars_table: str, events_table: str) -> None:
        self._client = client
        self._users = users_table
        self._calendars = calendars_table
        self._events = events_table
        self._lock = threading.Lock()
        self.consumed = 0.0  # read capacity units, summed over every read this reader made
        self.requests = 0
        self.items_read = 0  # items the queries examined (before any filter)

    def _count(self, response: Mapping[str, Any]) -> None:
        units = float((response.get("ConsumedCapacity") or {}).get("CapacityUnits") or 0)
        with self._lock:
            self.consumed += units
            self.requests += 1

    def _query(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Every page of a Query, as plain items."""
        items: list[dict[str, Any]] = []
        for page in query_pages(self._client, {**request, "ReturnConsumedCapacity": "TOTAL"}):
            self._count(page)
            with self._lock:
                self.items_read += int(page.get("ScannedCount", 0))
            items += [plain(item) for item in page.get("Items", [])]
        return items

    def sync_state(self, open_id: str) -> dict[str, Any] | None:
        """The user's ``open_id``, ``status`` and ``last_success_at``; None for an unknown user."""
        projection, names = _names(SYNC_STATE)
        response = self._client.get_item(
            TableName=self._users,
            Key=attribute_values({"open_id": open_id}),
            ProjectionExpression=projection,
            ExpressionAttributeNames=names,
            ReturnConsumedCapacity="TOTAL",
        )
        self._count(response)
        item = response.get("Item")
        return plain(item) if item else None

    def live_calendars(self, open_id: str) -> list[dict[str, Any]]:
        """The user's live calendars (no tombstones): ``calendar_id`` and the Feishu fields."""
        projection, names = _names(("calendar_id", "deleted_at", *CALENDAR_FIELDS))
        items = self._query(
            {
                "TableName": self._calendars,
                "KeyConditionExpression": "open_id = :o",
                "ProjectionExpression": projection,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": attribute_values({":o": open_id}),
            }
        )
        return [item for item in items if "deleted_at" not in item]

    def index_items(
        self,
        open_id: str,
        segment: Segment,
        at_least: int,
        at_most: int,
        *,
        starting_before: int | None = None,
        ending_from: int | None = None,
    ) -> list[dict[str, Any]]:
        """Items of the user's ``segment`` partition of the agenda index with ``at_least <= agenda_at
        <= at_most`` (and ``agenda_start < starting_before``, ``agenda_end >= ending_from`` when given:
        filters, which save the transfer but not the read units of what they drop)."""
        if at_least > at_most:
            return []
        projection, names = _names(AGENDA_PROJECTION)
        values: dict[str, Any] = {":k": f"{open_id}#{segment}", ":lo": at_least, ":hi": at_most}
        filters = []
        if starting_before is not None:
            filters.append("agenda_start < :before")
            values[":before"] = starting_before
        if ending_from is not None:
            filters.append("agenda_end >= :end")
            values[":end"] = ending_from
        request: dict[str, Any] = {
            "TableName": self._events,
            "IndexName": AGENDA_INDEX,
            "KeyConditionExpression": "agenda_key = :k AND agenda_at BETWEEN :lo AND :hi",
            "ProjectionExpression": projection,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": attribute_values(values),
        }
        if filters:
            request["FilterExpression"] = " AND ".join(filters)
        items = self._query(request)
        return [_entry(item) for item in items]
