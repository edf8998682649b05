"""DynamoDB stream records of the mirror tables, shaped as Lambda delivers them, and a scripted EventBridge
(``StubEvents``): what the change-stream tests feed the publisher and what they watch it send."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeSerializer

CALENDARS_STREAM = "arn:aws:dynamodb:us-east-1:000000000000:table/calendars/stream/2026-01-01T00:00:00.000"
EVENTS_STREAM = "arn:aws:dynamodb:us-east-1:000000000000:table/events/stream/2026-01-01T00:00:00.000"
TTL_IDENTITY = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
_serializer = TypeSerializer()
_sequence = itertools.count(1000)


def _decimals(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decimals(v) for v in value]
    return value


def attribute_map(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values as a stream image (Lambda's JSON: numbers as strings)."""
    return {name: _serializer.serialize(_decimals(value)) for name, value in values.items()}


def calendar(
    open_id: str = "ou_a", calendar_id: str = "cal_1", *, mirrored_at: int = 1_000, deleted: bool = False, **fields: Any
) -> dict[str, Any]:
    """A calendars-table item (a tombstone when ``deleted``)."""
    item = {"open_id": open_id, "calendar_id": calendar_id, "mirrored_at": mirrored_at, **fields}
    if deleted:
        item |= {"deleted_at": mirrored_at // 1000, "expires_at": mirrored_at // 1000 + 2_592_000}
    return item


def event(
    open_id: str = "ou_a",
    calendar_id: str = "cal_1",
    event_id: str = "evt_1",
    *,
    mirrored_at: int = 1_000,
    deleted: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """An events-table item (a tombstone when ``deleted``)."""
    item = {
        "calendar_key": f"{open_id}#{calendar_id}",
        "event_id": event_id,
        "open_id": open_id,
        "calendar_id": calendar_id,
        "mirrored_at": mirrored_at,
        **fields,
    }
    if deleted:
        item |= {"deleted_at": mirrored_at // 1000, "expires_at": mirrored_at // 1000 + 2_592_000}
    return item


def record(
    event_name: str,
    *,
    old: Mapping[str, Any] | None = None,
    new: Mapping[str, Any] | None = None,
    sequence: str | None = None,
    ttl: bool = False,
    created: int = 1_800_000_000,
) -> dict[str, Any]:
    """One stream record of a ``NEW_AND_OLD_IMAGES`` stream, as in a Lambda event."""
    item = new if new is not None else old
    assert item is not None
    is_event = "event_id" in item
    key_names = ("calendar_key", "event_id") if is_event else ("open_id", "calendar_id")
    body: dict[str, Any] = {
        "ApproximateCreationDateTime": created,
        "Keys": attribute_map({name: item[name] for name in key_names}),
        "SequenceNumber": sequence or str(next(_sequence)),
        "SizeBytes": 100,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if old is not None:
        body["OldImage"] = attribute_map(old)
    if new is not None:
        body["NewImage"] = attribute_map(new)
    out: dict[str, Any] = {
        "eventID": f"id-{body['SequenceNumber']}",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": body,
        "eventSourceARN": EVENTS_STREAM if is_event else CALENDARS_STREAM,
    }
    if ttl:
        out["userIdentity"] = TTL_IDENTITY
    return out


class StubEvents:
    """EventBridge's PutEvents, answering from a script: per call, the positions to fail (or an exception)."""

    def __init__(self, script: Sequence[set[int] | Exception] = ()) -> None:
        self.script = list(script)
        self.calls: list[list[Mapping[str, Any]]] = []

    def put_events(self, *, Entries: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
        assert 1 <= len(Entries) <= 10
        self.calls.append(list(Entries))
        failing = self.script.pop(0) if self.script else set()
        if isinstance(failing, Exception):
            raise failing
        results = [
            {"ErrorCode": "InternalFailure", "ErrorMessage": "try again"}
            if n in failing
            else {"EventId": f"e-{len(self.calls)}-{n}"}
            for n in range(len(Entries))
        ]
        return {"FailedEntryCount": len(failing), "Entries": results}

    def summaries(self) -> list[list[str]]:
        return [[json.loads(e["Detail"])["after"]["summary"] for e in call] for call in self.calls]


def renames(count: int) -> list[dict[str, Any]]:
    """``count`` records, each renaming calendar n to "s<n>"."""
    return [
        record(
            "MODIFY",
            old=calendar(calendar_id=f"c{n}", summary="old"),
            new=calendar(calendar_id=f"c{n}", summary=f"s{n}"),
        )
        for n in range(count)
    ]
