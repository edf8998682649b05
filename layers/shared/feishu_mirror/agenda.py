"""The read side: a user's calendars, agenda (recurring events expanded) and free/busy, from the mirror.

Pure logic plus the service that drives an ``AgendaSource`` (the port; its DynamoDB adapter is
``dynamodb.agenda_reader.AgendaReader``). Nothing here does I/O itself, nor reads a request or writes the
routes' JSON: ``agenda_http`` parses the query parameters and turns the answers into JSON.

Above 500 lines on purpose: the index's attributes (written with each event) and the queries and
expansion that read them (the service) are one design — what the spans promise at write time is what
makes the reads complete — so they stay side by side; Feishu's time formats and RRULEs are ``recurrence``'s.

**The agenda index.** Each live event item carries four derived attributes, written with the item by
the mirror (``agenda_index_attributes``) and read through the Events table's ``agenda-index`` GSI:

- ``agenda_start`` / ``agenda_end``: the span of time the item can affect. A single event: its own start
  and end. A recurring master: its first start to the end of its last occurrence (``FOREVER`` when the
  rule never ends). A modified or cancelled occurrence (an exception): from the earlier to the later of
  its new times and its original start, so it is found both where it now is and where it was.
- ``agenda_key`` = ``<open_id>#short`` for items whose span is at most ``SHORT_SPAN`` (two days: nearly
  every event), sorted by ``agenda_at`` = ``agenda_start``; ``<open_id>#long`` for recurring masters and
  longer items, sorted by ``agenda_at`` = ``agenda_end``.

A window ``[from, to)`` then costs two queries of one user's index partitions: the long partition from
``agenda_end >= from - SHORT_SPAN`` (every series still running, however long ago it began, and every
long event not yet over, filtered to ``agenda_start < to``), and the short partition for
``from - SHORT_SPAN - D <= agenda_start < to``, where D is the longest occurrence of the series found
(an occurrence that began before the window can still overlap it, and so can its exception). A series
whose occurrences last longer than ``SHORT_SPAN`` adds one query of the long partition's slice before
that. Tombstones carry no index attributes, so deleted events never enter the index.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from feishu_mirror.errors import MirrorError
from feishu_mirror.identifiers import is_open_id
from feishu_mirror.models import Calendar, has_readable_events
from feishu_mirror.recurrence import (
    DAY,
    FOREVER,
    EventTime,
    InvalidEventTime,
    InvalidRecurrence,
    Series,
    TooManyOccurrences,
    overlaps,
    parse_event_time,
)

AGENDA_INDEX = "agenda-index"
# The Feishu fields an agenda shows or needs, copied into ``agenda_entry`` (one JSON string): the index
# projects that one attribute instead of a dozen nested ones, which makes each item far cheaper to read.
ENTRY_FIELDS = (
    "summary",
    "start_time",
    "end_time",
    "status",
    "free_busy_status",
    "location",
    "recurrence",
    "recurring_event_id",
    "is_exception",
)
SHORT_SPAN = 2 * DAY
USUAL_REACH = DAY  # no series' occurrence lasts longer, nearly always: the short partition is read assuming so
MAX_ENTRIES = 10_000
_INSTANCE_ID = re.compile(r"(.+)_(\d{1,12})")

Segment = Literal["short", "long"]
SHORT: Segment = "short"
LONG: Segment = "long"


# ---------------------------------------------------------------------------------- errors
class AgendaError(MirrorError):
    """A read-side request that cannot be answered; ``status`` and ``code`` say how to answer it."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class AgendaRequestInvalid(AgendaError):
    """A malformed parameter (window, open_id, time zone, user list): 400."""


class UserNotFound(AgendaError):
    """No user with this open_id has authorised the mirror: 404."""

    status = 404
    code = "unknown_user"


class NotSyncedYet(AgendaError):
    """The user authorised the mirror but their first sync has not finished: 409."""

    status = 409
    code = "not_synced_yet"


class WindowTooBusy(AgendaError):
    """More occurrences than one answer may hold: 422 (ask for a shorter window)."""

    status = 422
    code = "too_many_occurrences"


# ---------------------------------------------------------------------------------- requests
def valid_open_id(value: str) -> str:
    """The open_id if it is one (``identifiers.is_open_id``); else raises ``AgendaRequestInvalid``."""
    if not is_open_id(value):
        raise AgendaRequestInvalid("not a valid open_id", code="invalid_open_id")
    return value


@dataclass(frozen=True, slots=True)
class Window:
    """The half-open window ``[start, end)`` a request asks about, in epoch seconds."""

    start: int
    end: int

    @classmethod
    def days_from(cls, start: int, days: int) -> Window:
        """``days`` days from ``start``."""
        return cls(start, start + days * DAY)


# ---------------------------------------------------------------------------------- items
def json_value(value: Any) -> Any:
    """JSON-friendly copy of a stored value: Decimals as ints or floats, nested maps and lists too."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


def _original_start(event_id: str) -> int | None:
    """The original start (unix seconds) an instance id ``<uid>_<seconds>`` names; None for ``_0``."""
    found = _INSTANCE_ID.fullmatch(event_id)
    seconds = int(found.group(2)) if found else 0
    return seconds if seconds > 0 else None


def _uid(event_id: str) -> str:
    found = _INSTANCE_ID.fullmatch(event_id)
    return found.group(1) if found else event_id


@dataclass(frozen=True, slots=True)
class EventItem:
    """A mirrored event as the read side sees it: its times parsed, its kind known."""

    calendar_id: str
    event_id: str
    start: EventTime
    end: EventTime
    fields: Mapping[str, Any]
    series: Series | None = None  # a recurring master whose rule could be read
    master_id: str | None = None  # an exception's recurring_event_id
    original_start: int | None = None  # an exception's original start (from its id)

    @classmethod
    def parse(cls, item: Mapping[str, Any]) -> EventItem:
        """Parse an item (Feishu fields plus ``calendar_id``/``event_id``); raises ``InvalidEventTime``.

        A master whose ``recurrence`` cannot be read becomes a single event at its own time, so a
        garbled rule never hides the event itself.
        """
        event_id = str(item.get("event_id", ""))
        start = parse_event_time(item.get("start_time"))
        try:
            end = parse_event_time(item.get("end_time"))
        except InvalidEventTime:
            end = start
        if start.day is not None:
            if end.day is None or end.day <= start.day:  # an all-day event lasts at least its own date
                end = EventTime.on_day(start.day + timedelta(days=1), start.tz)
        elif end.day is not None or end.epoch < start.epoch:
            end = start
        master_id = item.get("recurring_event_id") or None
        original = _original_start(event_id)
        exception = item.get("is_exception") is True or bool(master_id and original)
        series = None
        if not exception and item.get("recurrence"):
            try:
                series = Series.of(start, end, item["recurrence"])
            except InvalidRecurrence:
                series = None
        return cls(
            calendar_id=str(item.get("calendar_id", "")),
            event_id=event_id,
            start=start,
            end=end,
            fields=item,
            series=series,
            master_id=(str(master_id) if master_id else f"{_uid(event_id)}_0") if exception else None,
            original_start=original if exception else None,
        )

    @property
    def cancelled(self) -> bool:
        """``status: cancelled``."""
        return self.fields.get("status") == "cancelled"

    @property
    def is_exception(self) -> bool:
        """A modified or cancelled occurrence of a series."""
        return self.master_id is not None

    def span(self) -> tuple[int, int]:
        """The time the item can affect (see the module docstring)."""
        if self.series is not None:
            return self.start.epoch, self.series.last_end()
        low, high = self.start.epoch, max(self.end.epoch, self.start.epoch)
        if self.original_start is not None:
            low, high = min(low, self.original_start), max(high, self.original_start)
        return low, high


def agenda_index_attributes(open_id: str, event_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The derived attributes that place a live event item in the agenda index (see the module
    docstring); empty for an item the agenda never shows (a cancelled event that is no exception, or
    one whose times cannot be read), which keeps it out of the index."""
    try:
        item = EventItem.parse({**fields, "event_id": event_id})
    except InvalidEventTime:
        return {}
    if item.cancelled and not item.is_exception:
        return {}
    low, high = item.span()
    long = item.series is not None or high - low > SHORT_SPAN
    entry = {name: json_value(fields[name]) for name in ENTRY_FIELDS if fields.get(name) not in (None, "")}
    return {
        "agenda_key": f"{open_id}#{LONG if long else SHORT}",
        "agenda_at": high if long else low,
        "agenda_start": low,
        "agenda_end": high,
        "agenda_entry": json.dumps(entry, ensure_ascii=False, separators=(",", ":")),
    }


# ---------------------------------------------------------------------------------- agenda
@dataclass(frozen=True, slots=True)
class Entry:
    """One occurrence in an agenda: a single event, a generated occurrence of a series, or an exception."""

    calendar_id: str
    event_id: str
    start: EventTime
    end: EventTime
    fields: Mapping[str, Any]
    recurring_event_id: str | None = None
    original_start: EventTime | None = None

    @property
    def busy(self) -> bool:
        """Counts for free/busy: not cancelled and not marked ``free``."""
        return self.fields.get("status") != "cancelled" and self.fields.get("free_busy_status") != "free"

    def sort_key(self) -> tuple[int, int, str, str]:
        """Start, then end, then ids: a stable order."""
        return self.start.epoch, self.end.epoch, self.calendar_id, self.event_id


def _original_key(series: Series, original: int) -> int | str:
    """How an exception's original start names one of the series' occurrences: the instant for a
    timed series; for an all-day one the date (a UTC midnight is read in UTC, anything else in the
    event's zone, as Feishu's instance ids may use either)."""
    if not series.start.all_day:
        return original
    tz = UTC if original % DAY == 0 else series.start.tz
    return datetime.fromtimestamp(original, tz).date().isoformat()


def _original_time(item: EventItem) -> EventTime | None:
    """An exception's original start as a time of its zone (a date, for an all-day event)."""
    if item.original_start is None:
        return None
    if not item.start.all_day:
        return EventTime(item.original_start, item.start.tz)
    tz = UTC if item.original_start % DAY == 0 else item.start.tz
    return EventTime.on_day(datetime.fromtimestamp(item.original_start, tz).date(), item.start.tz)


def _occurrence_id(master: EventItem, start: EventTime) -> str:
    """The instance id Feishu gives an occurrence: ``<uid>_<original start seconds>`` (an all-day
    occurrence's seconds are its date's UTC midnight)."""
    seconds = start.epoch
    if start.day is not None:
        seconds = int(datetime(start.day.year, start.day.month, start.day.day, tzinfo=UTC).timestamp())
    return f"{_uid(master.event_id)}_{seconds}"


def expand(items: Iterable[EventItem], window: Window) -> list[Entry]:
    """Every occurrence overlapping ``window``, sorted by start; raises ``WindowTooBusy``.

    Series are expanded; an exception replaces the occurrence it names (a cancelled one removes it);
    cancelled events and cancelled exceptions are absent; an exception whose series is gone or whose
    occurrence the rule no longer produces is shown at its own time.
    """
    items = list(items)
    exceptions: dict[tuple[str, str], list[EventItem]] = {}
    for item in items:
        if item.is_exception and item.original_start is not None:
            exceptions.setdefault((item.calendar_id, str(item.master_id)), []).append(item)
    entries: list[Entry] = []
    for item in items:
        if item.series is not None:
            if item.cancelled:
                continue
            series = item.series
            replaced = {
                _original_key(series, e.original_start)
                for e in exceptions.get((item.calendar_id, item.event_id), [])
                if e.original_start is not None
            }
            try:
                generated = series.occurrences(window.start, window.end)
            except TooManyOccurrences as exc:
                raise WindowTooBusy(str(exc)) from exc
            for occurrence in generated:
                key = occurrence.start.day.isoformat() if occurrence.start.day else occurrence.start.epoch
                if key in replaced:
                    continue
                entries.append(
                    Entry(
                        item.calendar_id,
                        _occurrence_id(item, occurrence.start),
                        occurrence.start,
                        occurrence.end,
                        item.fields,
                        recurring_event_id=item.event_id,
                        original_start=occurrence.start,
                    )
                )
        elif not item.cancelled and overlaps(item.start.epoch, item.end.epoch, window.start, window.end):
            entries.append(
                Entry(
                    item.calendar_id,
                    item.event_id,
                    item.start,
                    item.end,
                    item.fields,
                    recurring_event_id=item.master_id,
                    original_start=_original_time(item),
                )
            )
        if len(entries) > MAX_ENTRIES:
            raise WindowTooBusy(f"more than {MAX_ENTRIES} occurrences in the window: ask for a shorter one")
    return sorted(entries, key=Entry.sort_key)


def _day_text(day: date) -> str:
    return f"{day:%a} {day.isoformat()}"


def human_span(start: EventTime, end: EventTime, tz: ZoneInfo | None = None) -> str:
    """When an occurrence happens, for people: ``Mon 2026-03-09 10:00–10:30 Asia/Shanghai``, ``Mon
    2026-03-09 23:00 – Tue 2026-03-10 01:00 …``, or ``Thu 2026-03-12 – Fri 2026-03-13 (all day)``
    (an all-day event's last date, not Feishu's exclusive end date)."""
    if start.day is not None:
        last = (end.day or start.day) - timedelta(days=1)
        if last <= start.day:
            return f"{_day_text(start.day)} (all day)"
        return f"{_day_text(start.day)} – {_day_text(last)} (all day)"
    zone = tz or start.tz
    begin, finish = datetime.fromtimestamp(start.epoch, zone), datetime.fromtimestamp(end.epoch, zone)
    head = f"{begin:%a} {begin:%Y-%m-%d %H:%M}"
    if finish.date() == begin.date():
        return f"{head}–{finish:%H:%M} {zone.key}"
    return f"{head} – {finish:%a} {finish:%Y-%m-%d %H:%M} {zone.key}"


def busy_intervals(entries: Iterable[Entry], window: Window) -> list[tuple[int, int]]:
    """The merged busy time of ``entries`` inside ``window``: overlapping and touching intervals of
    busy occurrences (not cancelled, not ``free``) joined, clipped to the window, in order."""
    spans = sorted(
        (max(e.start.epoch, window.start), min(e.end.epoch, window.end))
        for e in entries
        if e.busy and e.end.epoch > e.start.epoch
    )
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def longest_occurrence(items: Iterable[EventItem]) -> int:
    """Seconds of the longest occurrence among the series in ``items`` (0 without series)."""
    return max((item.series.duration for item in items if item.series is not None), default=0)


# ---------------------------------------------------------------------------------- service
class AgendaSource(Protocol):
    """What the read side needs from the mirror (``dynamodb.agenda_reader.AgendaReader`` on DynamoDB)."""

    def sync_state(self, open_id: str) -> Mapping[str, Any] | None:
        """The user's ``open_id``, ``status`` and ``last_success_at``; None for an unknown user."""

    def live_calendars(self, open_id: str) -> list[dict[str, Any]]:
        """The user's live calendar items (``calendar_id`` and the Feishu fields)."""

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
        """Items of one index partition with ``at_least <= agenda_at <= at_most`` (and, when given,
        ``agenda_start < starting_before`` and ``agenda_end >= ending_from``)."""


@dataclass(frozen=True, slots=True)
class UserAgenda:
    """One user's occurrences in a window."""

    open_id: str
    window: Window
    synced_at: int
    calendars: tuple[str, ...]
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class UserCalendars:
    """One user's live calendars, each with whether the mirror holds its events."""

    open_id: str
    synced_at: int
    calendars: tuple[tuple[Calendar, bool], ...]


@dataclass(frozen=True, slots=True)
class FreeBusy:
    """One user's merged busy intervals in a window; or, for a user who cannot be answered (unknown, not
    synced yet), the ``error`` code and ``message`` instead."""

    open_id: str
    synced_at: int = 0
    busy: tuple[tuple[int, int], ...] = ()
    error: str = ""
    message: str = ""


class AgendaService:
    """Answers the read routes from an ``AgendaSource``; never calls Feishu."""

    def __init__(self, source: AgendaSource, *, clock: Callable[[], float] = time.time, workers: int = 8) -> None:
        self._source = source
        self._clock = clock
        self._workers = workers

    def _synced(self, open_id: str, state: Mapping[str, Any] | None) -> int:
        if state is None:
            raise UserNotFound(f"no user with the open_id {open_id} has authorised the mirror")
        synced_at = state.get("last_success_at")
        if not synced_at:
            raise NotSyncedYet(
                f"the user {open_id} has authorised the mirror but their first sync has not finished yet; try again shortly"
            )
        return int(synced_at)

    def calendars(self, open_id: str) -> UserCalendars:
        """The user's live calendars, by summary; raises ``UserNotFound``, ``NotSyncedYet``,
        ``AgendaRequestInvalid``."""
        synced_at = self._synced(open_id, self._source.sync_state(valid_open_id(open_id)))
        items = sorted(
            self._source.live_calendars(open_id), key=lambda c: (str(c.get("summary", "")).lower(), c["calendar_id"])
        )
        calendars = [Calendar(c["calendar_id"], c) for c in items]
        return UserCalendars(open_id, synced_at, tuple((c, has_readable_events(c)) for c in calendars))

    def _short(self, open_id: str, window: Window, reach: int) -> list[dict[str, Any]]:
        """The short partition's items for ``window`` when no occurrence lasts longer than ``reach``."""
        start = window.start - reach
        return self._source.index_items(open_id, SHORT, start - SHORT_SPAN, window.end - 1, ending_from=start)

    def _window_items(self, open_id: str, window: Window, pool: ThreadPoolExecutor) -> list[EventItem]:
        """The index items that can matter for ``window`` (the queries of the module docstring). The
        short partition is read at once, assuming no series' occurrence lasts over ``USUAL_REACH``,
        and read again, further back, when the long partition shows one that does."""
        source = self._source
        long_read = pool.submit(
            source.index_items, open_id, LONG, window.start - SHORT_SPAN, FOREVER, starting_before=window.end
        )
        short_read = pool.submit(self._short, open_id, window, USUAL_REACH)
        long = _parsed(long_read.result())
        reach = longest_occurrence(long)
        if reach > SHORT_SPAN:
            earlier = source.index_items(
                open_id, LONG, window.start - reach, window.start - SHORT_SPAN - 1, starting_before=window.end
            )
            long += _parsed(earlier)
        short = short_read.result() if reach <= USUAL_REACH else self._short(open_id, window, reach)
        return long + _parsed(short)

    def agenda(self, open_id: str, window: Window) -> UserAgenda:
        """Every occurrence on the user's live, readable calendars overlapping ``window``, by start.

        The user's state, calendars and index partitions are read concurrently. Raises
        ``UserNotFound``, ``NotSyncedYet``, ``AgendaRequestInvalid`` or ``WindowTooBusy``.
        """
        valid_open_id(open_id)
        with ThreadPoolExecutor(max_workers=4) as pool:
            state = pool.submit(self._source.sync_state, open_id)
            calendars = pool.submit(self._source.live_calendars, open_id)
            items = pool.submit(self._window_items, open_id, window, pool)
            synced_at = self._synced(open_id, state.result())
            readable = sorted(
                c["calendar_id"] for c in calendars.result() if has_readable_events(Calendar(c["calendar_id"], c))
            )
            wanted = set(readable)
            found = [item for item in items.result() if item.calendar_id in wanted]
        return UserAgenda(open_id, window, synced_at, tuple(readable), tuple(expand(found, window)))

    def freebusy(self, open_ids: Sequence[str], window: Window) -> list[FreeBusy]:
        """Each user's merged busy intervals, in the order asked; a user who is unknown or not synced
        yet gets an ``error`` instead (the others are still answered)."""

        def one(open_id: str) -> FreeBusy:
            try:
                agenda = self.agenda(open_id, window)
            except (UserNotFound, NotSyncedYet) as exc:
                return FreeBusy(open_id, error=exc.code, message=str(exc))
            return FreeBusy(open_id, agenda.synced_at, tuple(busy_intervals(agenda.entries, window)))

        for open_id in open_ids:
            valid_open_id(open_id)
        with ThreadPoolExecutor(max_workers=max(1, min(self._workers, len(open_ids)))) as pool:
            return list(pool.map(one, open_ids))


def _parsed(raw: Iterable[Mapping[str, Any]]) -> list[EventItem]:
    """Items whose times can be read (an unreadable one is skipped: it has no place in time)."""
    parsed = []
    for item in raw:
        try:
            parsed.append(EventItem.parse(item))
        except InvalidEventTime:
            continue
    return parsed
