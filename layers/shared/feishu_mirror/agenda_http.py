"""The read routes' HTTP edge: query parameters parsed into the read side's values, its answers as JSON.

Parsing (``parse_window``, ``time_zone``, ``open_id_list``) refuses a bad parameter with ``AgendaRequestInvalid``
and a code the route answers with. The JSON forms are the contract consumers read
(``docs/consumers.md``): times as RFC 3339 (in ``tz`` when the request names one, else in each event's
own zone, or UTC for instants of the mirror), all-day events as dates, numbers as plain JSON numbers.
The read side itself (``agenda``) works in epoch seconds and domain values, and never sees a request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from feishu_mirror.agenda import (
    AgendaRequestInvalid,
    Entry,
    FreeBusy,
    UserAgenda,
    UserCalendars,
    Window,
    json_value,
    valid_open_id,
)
from feishu_mirror.models import CALENDAR_FIELDS
from feishu_mirror.recurrence import DAY

MAX_WINDOW_DAYS = 366
MAX_FREEBUSY_USERS = 50
EARLIEST = 0  # 1970-01-01
LATEST = 253370764800  # 9999-01-01: room for every zone's offset after it
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


# ---------------------------------------------------------------------------------- requests
def open_id_list(raw: str | None) -> list[str]:
    """``open_ids=a,b,c``: each valid, duplicates dropped, 1 to ``MAX_FREEBUSY_USERS`` of them."""
    ids = list(dict.fromkeys(part.strip() for part in (raw or "").split(",") if part.strip()))
    if not ids:
        raise AgendaRequestInvalid("open_ids is required: a comma-separated list of open_ids", code="invalid_open_id")
    if len(ids) > MAX_FREEBUSY_USERS:
        raise AgendaRequestInvalid(f"at most {MAX_FREEBUSY_USERS} users per request", code="too_many_users")
    return [valid_open_id(open_id) for open_id in ids]


def time_zone(raw: str | None) -> ZoneInfo | None:
    """The optional ``tz`` parameter: an IANA zone name to show timed events in; else raises."""
    if raw is None or raw == "":
        return None
    try:
        if len(raw) > 64:
            raise ValueError(raw)
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise AgendaRequestInvalid(
            "tz must be an IANA time zone such as Asia/Shanghai", code="invalid_time_zone"
        ) from exc


def _instant(name: str, raw: str | None) -> int:
    text = (raw or "").strip()
    # In a query string an unencoded "+" arrives as a space: "…T09:00:00 08:00" means "+08:00".
    text = re.sub(r" (\d{2}:\d{2})$", r"+\1", text)
    if not _RFC3339.fullmatch(text):
        raise AgendaRequestInvalid(
            f"{name} must be an RFC 3339 date-time with an offset, such as 2026-03-09T00:00:00+08:00",
            code="invalid_window",
        )
    try:
        moment = datetime.fromisoformat(text.upper().replace(" ", "T"))
        epoch = int(moment.timestamp())
    except (ValueError, OverflowError) as exc:
        raise AgendaRequestInvalid(f"{name} is not a real date-time", code="invalid_window") from exc
    if not EARLIEST <= epoch <= LATEST:
        raise AgendaRequestInvalid(f"{name} must lie between 1970 and 9000", code="invalid_window")
    return epoch


def parse_window(start: str | None, end: str | None) -> Window:
    """``from`` and ``to`` as RFC 3339 instants; ``to`` after ``from``, at most 366 days later."""
    parsed = Window(_instant("from", start), _instant("to", end))
    if parsed.end <= parsed.start:
        raise AgendaRequestInvalid("to must be after from", code="invalid_window")
    if parsed.end - parsed.start > MAX_WINDOW_DAYS * DAY:
        raise AgendaRequestInvalid(f"the window may span at most {MAX_WINDOW_DAYS} days", code="window_too_long")
    return parsed


# ---------------------------------------------------------------------------------- JSON
def stamp(epoch: int, tz: ZoneInfo | None = None) -> str:
    """An instant as RFC 3339: in ``tz`` when given, else in UTC with ``Z``."""
    moment = datetime.fromtimestamp(epoch, tz or UTC)
    return moment.isoformat().replace("+00:00", "Z") if tz is None else moment.isoformat()


def window_json(window: Window, tz: ZoneInfo | None = None) -> dict[str, str]:
    """``from`` and ``to`` as RFC 3339 (in ``tz``, else UTC)."""
    return {"from": stamp(window.start, tz), "to": stamp(window.end, tz)}


def entry_json(entry: Entry, tz: ZoneInfo | None = None) -> dict[str, Any]:
    """One occurrence as the agenda route gives it (times in ``tz`` when given, else in the event's own zone)."""
    location = entry.fields.get("location")
    return {
        "calendar_id": entry.calendar_id,
        "event_id": entry.event_id,
        "recurring_event_id": entry.recurring_event_id,
        "start": entry.start.rfc3339(tz),
        "end": entry.end.rfc3339(tz),
        "all_day": entry.start.all_day,
        "time_zone": entry.start.tz.key,
        "original_start": entry.original_start.rfc3339(tz) if entry.original_start else None,
        "summary": str(entry.fields.get("summary") or ""),
        "status": str(entry.fields.get("status") or "confirmed"),
        "free_busy_status": str(entry.fields.get("free_busy_status") or "busy"),
        "location": json_value(location) if isinstance(location, Mapping) and location else None,
    }


def agenda_json(agenda: UserAgenda, tz: ZoneInfo | None = None) -> dict[str, Any]:
    """The agenda route's answer."""
    return {
        "open_id": agenda.open_id,
        **window_json(agenda.window, tz),
        "time_zone": tz.key if tz else None,
        "synced_at": stamp(agenda.synced_at, tz),
        "calendar_ids": list(agenda.calendars),
        "occurrences": [entry_json(entry, tz) for entry in agenda.entries],
    }


def calendars_json(view: UserCalendars) -> dict[str, Any]:
    """The calendars route's answer: each live calendar's Feishu fields and whether its events are mirrored."""
    return {
        "open_id": view.open_id,
        "synced_at": stamp(view.synced_at),
        "calendars": [
            {
                "calendar_id": calendar.calendar_id,
                **{name: json_value(calendar.fields[name]) for name in CALENDAR_FIELDS if name in calendar.fields},
                "events_mirrored": mirrored,
            }
            for calendar, mirrored in view.calendars
        ],
    }


def freebusy_json(window: Window, users: Sequence[FreeBusy], tz: ZoneInfo | None = None) -> dict[str, Any]:
    """The free/busy route's answer: per user, the busy intervals as RFC 3339 (in ``tz``, else UTC), or
    why that user has none to give."""
    out: list[dict[str, Any]] = []
    for user in users:
        if user.error:
            out.append({"open_id": user.open_id, "error": user.error, "message": user.message})
            continue
        out.append(
            {
                "open_id": user.open_id,
                "synced_at": stamp(user.synced_at, tz),
                "busy": [{"start": stamp(s, tz), "end": stamp(e, tz)} for s, e in user.busy],
            }
        )
    return {**window_json(window, tz), "time_zone": tz.key if tz else None, "users": out}
