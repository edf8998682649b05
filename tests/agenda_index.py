"""The read side's unit fixtures: an in-memory agenda index (``IndexedSource``, a fake of the
``agenda.AgendaSource`` port with DynamoDB's query semantics) and sample events as the mirror stores them."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from feishu_mirror.agenda import Segment, Window, agenda_index_attributes

SH = "Asia/Shanghai"
OPEN_ID = "ou_ada"


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, tz: str = SH) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp())


def timed(start: int, end: int, tz: str = SH) -> dict[str, Any]:
    return {
        "start_time": {"timestamp": str(start), "timezone": tz},
        "end_time": {"timestamp": str(end), "timezone": tz},
    }


def event(event_id: str, start: int, end: int, calendar_id: str = "cal_a", **fields: Any) -> dict[str, Any]:
    return {
        "calendar_id": calendar_id,
        "event_id": event_id,
        "summary": event_id,
        "status": "confirmed",
        **timed(start, end),
        **fields,
    }


def exception_of(master: Mapping[str, Any], original: int, start: int, end: int, **fields: Any) -> dict[str, Any]:
    uid = str(master["event_id"]).rsplit("_", 1)[0]
    return event(
        f"{uid}_{original}",
        start,
        end,
        str(master["calendar_id"]),
        is_exception=True,
        recurring_event_id=master["event_id"],
        **fields,
    )


# A weekly Monday 10:00–11:00 meeting from 5 January 2026, and the week of 2 February
WEEKLY = event("mtg_0", at(2026, 1, 5, 10), at(2026, 1, 5, 11), summary="Weekly", recurrence="FREQ=WEEKLY;BYDAY=MO")
FEB_2 = at(2026, 2, 2, 10)
WEEK = Window(at(2026, 2, 2), at(2026, 2, 9))


class IndexedSource:
    """The agenda index in memory, with DynamoDB's query semantics (key range, then the filter)."""

    def __init__(
        self, items: list[dict[str, Any]], *, synced: bool = True, calendars: list[dict[str, Any]] | None = None
    ) -> None:
        self.items = [{**i, **agenda_index_attributes(OPEN_ID, i["event_id"], i)} for i in items]
        self.synced = synced
        self.calendars = calendars or [
            {"calendar_id": c, "type": "shared", "role": "reader", "summary": c} for c in ("cal_a", "cal_b")
        ]
        self.queries: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()

    def sync_state(self, open_id: str) -> Mapping[str, Any] | None:
        if open_id != OPEN_ID:
            return None
        return {"open_id": open_id, "status": "active", **({"last_success_at": 1767225600} if self.synced else {})}

    def live_calendars(self, open_id: str) -> list[dict[str, Any]]:
        return list(self.calendars)

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
        with self.lock:
            self.queries.append((segment, at_least, at_most))
        return [  # what the index projects: the ids and the fields kept in agenda_entry
            {**json.loads(i["agenda_entry"]), "event_id": i["event_id"], "calendar_id": i["calendar_id"]}
            for i in self.items
            if i.get("agenda_key") == f"{open_id}#{segment}"
            and at_least <= i["agenda_at"] <= at_most
            and (starting_before is None or i["agenda_start"] < starting_before)
            and (ending_from is None or i["agenda_end"] >= ending_from)
        ]
