"""The operator's view: every user's health, one user's calendars, and "resync this user now".

``StatusService`` reads users' health (an allow-listed projection: never a token, a sync token or a
page token), their calendars and their event listings' summaries (projected too: event counts and
times, never a sync token) through the narrow ports below, and starts syncs through the same
``pings.PingDispatcher`` the callback uses, so an operator's resync coalesces with running syncs
exactly like a push does. It returns data (the views below, each with its JSON form): the HTTP edge
(``status_http``: content negotiation, query parameters, the origin check) and the HTML pages
(``status_pages``) live apart. The status routes are IAM-protected in the template: nothing here
authenticates.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from feishu_mirror.agenda import Entry
from feishu_mirror.errors import MirrorError, UnknownUser
from feishu_mirror.health import STATE_ORDER, UserHealth
from feishu_mirror.identifiers import is_open_id
from feishu_mirror.models import Calendar, CollectionId, Stored
from feishu_mirror.observability import count, logger
from feishu_mirror.pings import PingDispatcher

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
RESYNC_REASON = "operator_resync"

ResyncOutcome = Literal["started", "coalesced", "invoke_failed"]
RESYNC_MESSAGES: dict[str, str] = {
    "started": "A sync was started.",
    "coalesced": "A sync is already running or queued; it will pick up the latest state.",
    "invoke_failed": "The sync could not be started now; the user is due and the schedule will start it.",
}


class StatusRequestInvalid(MirrorError):
    """A malformed status request (bad ``limit``, ``start`` or open_id); answered with a 400."""


class ReauthorizationPending(MirrorError):
    """The user must consent again (``reauth_required``); no sync can run until they do."""


def valid_open_id(value: str) -> str:
    """The open_id if it is one (``identifiers.is_open_id``); else raises ``StatusRequestInvalid``."""
    if not is_open_id(value):
        raise StatusRequestInvalid("not a valid open_id")
    return value


# ---------------------------------------------------------------------------------- views
@dataclass(frozen=True, slots=True)
class Overview:
    """One page of users, worst state first, with the cursor of the next page."""

    users: tuple[UserHealth, ...]
    next_start: str | None
    limit: int
    generated_at: int
    states: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "generated_at": self.generated_at,
            "limit": self.limit,
            "next_start": self.next_start,
            "states_on_this_page": dict(self.states),
            "users": [user.as_dict() for user in self.users],
        }


@dataclass(frozen=True, slots=True)
class MirroredCalendar:
    """A live calendar of the mirror, with the Feishu fields it holds."""

    calendar_id: str
    fields: Mapping[str, Any]
    events: Mapping[str, Any] | None = None  # events_mirrored, synced_at, subscribed_at, held_sweep

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form; ``events`` is null for a calendar whose events are not mirrored (yet)."""
        return {"calendar_id": self.calendar_id, **self.fields, "events": dict(self.events) if self.events else None}


@dataclass(frozen=True, slots=True)
class UserDetail:
    """One user's health, live calendars and how many tombstones the mirror keeps."""

    health: UserHealth
    calendars: tuple[MirroredCalendar, ...]
    tombstones: int
    generated_at: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "generated_at": self.generated_at,
            "user": self.health.as_dict(),
            "calendars": [calendar.as_dict() for calendar in self.calendars],
            "live_calendars": len(self.calendars),
            "tombstones": self.tombstones,
        }


@dataclass(frozen=True, slots=True)
class ComingWeek:
    """The user's occurrences in the next days (agenda entries, by start), or why there are none to show."""

    entries: tuple[Entry, ...] = ()
    note: str = ""


@dataclass(frozen=True, slots=True)
class ResyncRequested:
    """What asking for a resync did."""

    open_id: str
    outcome: ResyncOutcome

    @property
    def message(self) -> str:
        """A sentence for the operator."""
        return RESYNC_MESSAGES[self.outcome]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"open_id": self.open_id, "outcome": self.outcome, "message": self.message}


class HealthReads(Protocol):
    """Users' allow-listed health attributes (``dynamodb.user_health.UserHealthReads``)."""

    def get_health(self, open_id: str) -> dict[str, Any] | None:
        """One user's, or None."""
        ...

    def list_health(self, limit: int, start: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of users', and where the next page starts."""
        ...


class MirroredCalendars(Protocol):
    """The calendars table (``dynamodb.mirror.CalendarStore``)."""

    def load_all(self, collection: CollectionId) -> dict[str, Stored[Calendar]]:
        """Every calendar item of the user, tombstones included."""
        ...


class EventSummaries(Protocol):
    """Each calendar's event counts and times (``dynamodb.listings.ListingStates``)."""

    def summaries(self, open_id: str) -> dict[str, dict[str, Any]]:
        """By calendar id; never a sync token."""
        ...


class StatusService:
    """Reads health and calendars for operators, and starts a user's sync on request."""

    def __init__(
        self,
        *,
        users: HealthReads,
        calendars: MirroredCalendars,
        pings: PingDispatcher,
        stale_after_seconds: int,
        event_listings: EventSummaries | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._calendars = calendars
        self._event_listings = event_listings
        self._pings = pings
        self._stale_after = stale_after_seconds
        self._clock = clock

    def _health(self, item: Mapping[str, Any], now: int) -> UserHealth:
        return UserHealth.from_item(item, now=now, stale_after_seconds=self._stale_after)

    def overview(self, *, limit: int = DEFAULT_PAGE_SIZE, start: str | None = None) -> Overview:
        """One page of users (a Scan page, see ``HealthReads.list_health``), worst state first."""
        now = int(self._clock())
        items, next_start = self._users.list_health(limit, valid_open_id(start) if start else None)
        rank = {state: n for n, state in enumerate(STATE_ORDER)}
        users = sorted((self._health(item, now) for item in items), key=lambda u: (rank[u.state], u.open_id))
        return Overview(
            users=tuple(users),
            next_start=next_start,
            limit=limit,
            generated_at=now,
            states=dict(Counter(user.state for user in users)),
        )

    def user(self, open_id: str) -> UserDetail:
        """One user's health and mirror; raises ``UnknownUser`` or ``StatusRequestInvalid``."""
        now = int(self._clock())
        item = self._users.get_health(valid_open_id(open_id))
        if item is None:
            raise UnknownUser(open_id)
        stored = self._calendars.load_all(CollectionId(open_id))
        events = self._event_listings.summaries(open_id) if self._event_listings else {}
        live = sorted(
            (
                MirroredCalendar(c.item.calendar_id, dict(c.item.fields), events.get(c.item.calendar_id))
                for c in stored.values()
                if c.live
            ),
            key=lambda c: (str(c.fields.get("summary", "")).lower(), c.calendar_id),
        )
        return UserDetail(
            health=self._health(item, now),
            calendars=tuple(live),
            tombstones=sum(1 for c in stored.values() if not c.live),
            generated_at=now,
        )

    def resync(self, open_id: str, *, requested_by: str = "") -> ResyncRequested:
        """Make the user due and start a sync now, coalescing with a running or queued one.

        Raises ``UnknownUser``, ``ReauthorizationPending`` (the user must consent again) or
        ``StatusRequestInvalid``.
        """
        item = self._users.get_health(valid_open_id(open_id))
        if item is None:
            raise UnknownUser(open_id)
        if UserHealth.from_item(item, now=0, stale_after_seconds=self._stale_after).reauth_required:
            raise ReauthorizationPending(open_id)
        outcome = self._pings.dispatch([open_id], reason=RESYNC_REASON)
        if outcome.started:
            result: ResyncOutcome = "started"
        elif outcome.invoke_failed:
            result = "invoke_failed"
        elif outcome.coalesced:
            result = "coalesced"
        else:  # became inactive between the two reads
            raise ReauthorizationPending(open_id)
        count("OperatorResyncs")
        logger.info("operator_resync", extra={"open_id": open_id, "outcome": result, "requested_by": requested_by})
        return ResyncRequested(open_id, result)
