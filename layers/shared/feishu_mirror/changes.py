"""The change stream for consumers: mirror-table changes (DynamoDB Streams) as domain events.

Each stream record of the calendars or events table becomes at most one EventBridge entry:
``CalendarCreated`` / ``CalendarUpdated`` / ``CalendarDeleted`` or ``CalendarEventCreated`` /
``CalendarEventUpdated`` / ``CalendarEventDeleted``. A tombstone write is a deletion, a live item
replacing a tombstone (or a new item) is a creation, and a write that changes no Feishu field
(``mirrored_at`` only) publishes nothing. Removing a tombstone — its TTL expiry, a REMOVE record whose
``userIdentity`` is the DynamoDB service — publishes nothing either; removing a live item (the mirror
never does) is a deletion. The ``detail`` carries the ids and the Feishu fields before and after, never
anything else of the item, plus the stream record's ``eventID`` (``change_id``, to deduplicate) and
``SequenceNumber`` (``sequence``, to order an item's changes); see ``docs/change-events.md``.

Pure mapping plus ``publish``, which sends a batch's entries in stream order; no Lambda imports.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

from feishu_mirror.models import CALENDAR_FIELDS, EVENT_FIELDS
from feishu_mirror.storable import REDUCED_ATTRIBUTE

SOURCE = "feishu-calendar-mirror"
SCHEMA_VERSION = "1"
MAX_ENTRIES_PER_REQUEST = 10  # EventBridge PutEvents limit
MAX_REQUEST_BYTES = 256 * 1024  # EventBridge PutEvents limit on the entries of one request, and so on one entry
TTL_PRINCIPAL = "dynamodb.amazonaws.com"  # the userIdentity of a REMOVE made by TTL
SEND_RESERVE_MS = 25_000  # no PutEvents starts with less time left: 3 attempts of 2 s connect + 5 s read, plus backoff

Kind = Literal["Created", "Updated", "Deleted"]
_ABSENT = object()


class MalformedRecord(ValueError):
    """A stream record this module cannot read (not a mirror table, or images missing)."""


# ------------------------------------------------------------------------------ attribute values
def _number(text: str) -> int | float:
    number = Decimal(text)
    return int(number) if number == number.to_integral_value() else float(number)


def _binary(raw: str | bytes) -> str:
    """Binary values as base64 text (Lambda's JSON already carries them so)."""
    return raw if isinstance(raw, str) else base64.b64encode(raw).decode("ascii")


def attribute_value(value: Mapping[str, Any]) -> Any:  # noqa: PLR0911 - one branch per DynamoDB type
    """One DynamoDB attribute value, as a stream record carries it, as plain JSON-ready Python.

    Numbers become ints when integral (floats otherwise), sets become sorted lists, binary base64 text.
    """
    if len(value) != 1:
        raise MalformedRecord("an attribute value has exactly one type")
    ((kind, raw),) = value.items()
    if kind == "S":
        return str(raw)
    if kind == "N":
        return _number(raw)
    if kind == "BOOL":
        return bool(raw)
    if kind == "NULL":
        return None
    if kind == "M":
        return {str(name): attribute_value(member) for name, member in raw.items()}
    if kind == "L":
        return [attribute_value(member) for member in raw]
    if kind == "SS":
        return sorted(str(member) for member in raw)
    if kind == "NS":
        return sorted(_number(member) for member in raw)
    if kind == "B":
        return _binary(raw)
    if kind == "BS":
        return sorted(_binary(member) for member in raw)
    raise MalformedRecord(f"unknown attribute value type {kind!r}")


def image(raw: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stream image (``NewImage`` / ``OldImage`` / ``Keys``) as plain values, or None when absent."""
    if raw is None:
        return None
    return {str(name): attribute_value(value) for name, value in raw.items()}


# ------------------------------------------------------------------------------------ mapping
@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One domain event, ready for EventBridge ``PutEvents``."""

    detail_type: str
    detail: dict[str, Any]

    @property
    def item_key(self) -> tuple[str, ...]:
        """Which mirrored item changed: (open_id, calendar_id[, event_id])."""
        return tuple(str(self.detail[name]) for name in ("open_id", "calendar_id", "event_id") if name in self.detail)

    def entry(self, bus_name: str) -> dict[str, str]:
        """The ``PutEvents`` entry; a detail too large for EventBridge loses ``before``/``after``
        (``truncated: true``), so consumers read the item from the mirror instead."""
        entry = self._entry(bus_name, self.detail)
        if entry_size(entry) > MAX_REQUEST_BYTES:
            entry = self._entry(bus_name, {**self.detail, "before": None, "after": None, "truncated": True})
        return entry

    def _entry(self, bus_name: str, detail: Mapping[str, Any]) -> dict[str, str]:
        return {
            "Source": SOURCE,
            "DetailType": self.detail_type,
            "Detail": json.dumps(detail, sort_keys=True, ensure_ascii=False, separators=(",", ":")),
            "EventBusName": bus_name,
        }


def entry_size(entry: Mapping[str, Any]) -> int:
    """An entry's size as EventBridge counts it against the request limit (UTF-8 bytes)."""
    size = sum(len(str(entry.get(name, "")).encode("utf-8")) for name in ("Source", "DetailType", "Detail"))
    size += sum(len(str(resource).encode("utf-8")) for resource in entry.get("Resources") or ())
    return size + (14 if entry.get("Time") else 0)


def _live(item: Mapping[str, Any] | None) -> bool:
    return item is not None and "deleted_at" not in item


def is_ttl_removal(record: Mapping[str, Any]) -> bool:
    """True for the REMOVE that DynamoDB's TTL makes (the service is the ``userIdentity``)."""
    identity = record.get("userIdentity") or {}
    return (
        record.get("eventName") == "REMOVE"
        and identity.get("type") == "Service"
        and identity.get("principalId") == TTL_PRINCIPAL
    )


def _images(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """Keys, old image and new image of a ``NEW_AND_OLD_IMAGES`` record, checked against its event name."""
    stream = record.get("dynamodb")
    if not isinstance(stream, Mapping):
        raise MalformedRecord("not a DynamoDB stream record")
    name = record.get("eventName")
    old, new = image(stream.get("OldImage")), image(stream.get("NewImage"))
    needs_old, needs_new = {"INSERT": (False, True), "MODIFY": (True, True), "REMOVE": (True, False)}.get(
        str(name), (None, None)
    )
    if needs_old is None:
        raise MalformedRecord(f"unknown eventName {name!r}")
    if (needs_old and old is None) or (needs_new and new is None):
        raise MalformedRecord(f"{name} record without the images of NEW_AND_OLD_IMAGES")
    keys = image(stream.get("Keys")) or {}
    return keys, old, new


def _ids(keys: Mapping[str, Any], item: Mapping[str, Any]) -> dict[str, str]:
    """The item's ids: open_id and calendar_id, and event_id for an event."""
    if "event_id" in keys:
        open_id, calendar_id = item.get("open_id"), item.get("calendar_id")
        if not (isinstance(open_id, str) and isinstance(calendar_id, str)):
            open_id, _, calendar_id = str(keys.get("calendar_key", "")).partition("#")
        ids = {"open_id": open_id, "calendar_id": calendar_id, "event_id": str(keys["event_id"])}
    elif "open_id" in keys and "calendar_id" in keys:
        ids = {"open_id": str(keys["open_id"]), "calendar_id": str(keys["calendar_id"])}
    else:
        raise MalformedRecord("neither a calendars nor an events table record")
    if not all(ids.values()):
        raise MalformedRecord("a record with an empty id")
    return ids


def _approximate_ms(record: Mapping[str, Any]) -> int | None:
    created = (record.get("dynamodb") or {}).get("ApproximateCreationDateTime")
    return int(float(created) * 1000) if isinstance(created, int | float | str | Decimal) and created != "" else None


def _fields(image: Mapping[str, Any], names: Mapping[str, type]) -> dict[str, Any]:
    """The Feishu fields of an image, and ``mirror_reduced`` when the item was stored without some of them."""
    fields = {k: image[k] for k in names if k in image}
    if REDUCED_ATTRIBUTE in image:
        fields[REDUCED_ATTRIBUTE] = image[REDUCED_ATTRIBUTE]
    return fields


def change_event(record: Mapping[str, Any]) -> ChangeEvent | None:
    """The domain event for one DynamoDB stream record (``NEW_AND_OLD_IMAGES``), or None.

    Raises ``MalformedRecord`` for a record that is not a mirror-table record with both images.
    """
    keys, old, new = _images(record)
    is_event = "event_id" in keys
    names = EVENT_FIELDS if is_event else CALENDAR_FIELDS
    before = _fields(old, names) if old is not None and _live(old) else None
    after = _fields(new, names) if new is not None and _live(new) else None
    if before is None and after is None:  # a tombstone written again, or removed (its TTL expired)
        return None
    if before == after:  # only mirrored_at changed
        return None
    kind: Kind = "Created" if before is None else ("Deleted" if after is None else "Updated")
    changed = sorted(name for name in names if (before or {}).get(name, _ABSENT) != (after or {}).get(name, _ABSENT))
    item = new if new is not None else old or {}
    detail: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        **_ids(keys, item),
        "before": before,
        "after": after,
        "changed": changed,
        "mirrored_at": _mirrored_at(record, old, new),
        # the stream record: the same for every publication of this change, increasing per item
        "change_id": str(record.get("eventID") or ""),
        "sequence": str((record.get("dynamodb") or {}).get("SequenceNumber") or ""),
    }
    return ChangeEvent(f"{'CalendarEvent' if is_event else 'Calendar'}{kind}", detail)


def _mirrored_at(record: Mapping[str, Any], old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> int:
    """When the change was made (ms): the written item's ``mirrored_at``; for a removal (no new item)
    the record's time, kept above the removed item's ``mirrored_at`` so (key, mirrored_at) stays unique."""
    if new is not None and isinstance(new.get("mirrored_at"), int):
        return int(new["mirrored_at"])
    previous = int(old["mirrored_at"]) if old is not None and isinstance(old.get("mirrored_at"), int) else 0
    return max(_approximate_ms(record) or 0, previous + 1)


# ----------------------------------------------------------------------------------- publishing
class EventsClient(Protocol):
    """The one EventBridge call the publisher makes (boto3's ``events`` client has it)."""

    def put_events(self, *, Entries: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
        """Send up to 10 entries."""


@dataclass(frozen=True, slots=True)
class Publication:
    """What ``publish`` did with one batch of stream records.

    ``failed_at`` is the index of the first record whose change did not reach EventBridge (or could
    not be read): it and every record after it must be retried, so per-item order holds.
    """

    published: int = 0
    skipped: int = 0
    failed_at: int | None = None
    error: str = ""


def _send(client: EventsClient, entries: Sequence[dict[str, str]]) -> tuple[int | None, str]:
    """Send one request; the position of the first entry EventBridge did not accept, and why."""
    try:
        response = client.put_events(Entries=entries)
    except Exception as exc:  # a transport or service error: nothing of this request counts as sent
        return 0, f"{type(exc).__name__}: {str(exc)[:200]}"
    results = list(response.get("Entries") or [])
    for position in range(len(entries)):
        result = results[position] if position < len(results) else {}
        if result.get("ErrorCode") or not result.get("EventId"):
            code = result.get("ErrorCode") or "NoEventId"
            return position, f"{code}: {str(result.get('ErrorMessage', ''))[:200]}"
    if int(response.get("FailedEntryCount") or 0):
        return 0, "FailedEntryCount without a failed entry"
    return None, ""


def publish(
    records: Sequence[Mapping[str, Any]],
    client: EventsClient,
    bus_name: str,
    *,
    time_left_ms: Callable[[], int] | None = None,
) -> Publication:
    """Map a batch of stream records (in stream order) and put their events on ``bus_name``.

    Requests hold up to 10 entries and 256 KB, and at most one change per item: EventBridge accepts or
    refuses each entry on its own, so a later change of an item never goes out while an earlier one is
    refused. Sending stops at the first failure: that record and every later one are left for the
    retry (``failed_at``); entries EventBridge already accepted after it are sent again then (consumers
    dedupe, see docs/change-events.md). With ``time_left_ms`` (the
    invocation's remaining time), no request starts within ``SEND_RESERVE_MS`` of the timeout, so an
    invocation ends with a partial batch response rather than a timeout that retries everything.
    """
    pending: list[tuple[int, dict[str, str], str]] = []  # (record index, entry, detail type)
    pending_items: set[tuple[str, ...]] = set()
    pending_bytes = 0
    published: list[str] = []
    skipped: list[int] = []

    def flush() -> tuple[int | None, str]:
        nonlocal pending_bytes
        if not pending:
            return None, ""
        failed: int | None
        if time_left_ms is not None and time_left_ms() < SEND_RESERVE_MS:
            failed, error = 0, "TimeoutApproaching: left for the retry"
        else:
            failed, error = _send(client, [entry for _, entry, _ in pending])
        sent = pending if failed is None else pending[:failed]
        published.extend(detail_type for _, _, detail_type in sent)
        failed_at = None if failed is None else pending[failed][0]
        pending.clear()
        pending_items.clear()
        pending_bytes = 0
        return failed_at, error

    def outcome(failed_at: int | None, error: str) -> Publication:
        done = [index for index in skipped if failed_at is None or index < failed_at]
        return Publication(len(published), len(done), failed_at, error)

    for index, record in enumerate(records):
        try:
            change = change_event(record)
        except MalformedRecord as exc:
            failed_at, error = flush()
            return outcome(index if failed_at is None else failed_at, error or f"MalformedRecord: {exc}")
        if change is None:
            skipped.append(index)
            continue
        entry = change.entry(bus_name)
        size = entry_size(entry)
        full = len(pending) == MAX_ENTRIES_PER_REQUEST or pending_bytes + size > MAX_REQUEST_BYTES
        if full or change.item_key in pending_items:
            failed_at, error = flush()
            if failed_at is not None:
                return outcome(failed_at, error)
        pending.append((index, entry, change.detail_type))
        pending_items.add(change.item_key)
        pending_bytes += size
    return outcome(*flush())
