"""Domain values: calendars and events as Feishu describes them, listing pages and their state, tokens,
per-user sync state, and the lease a sync holds (``Fence``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from feishu_mirror.identifiers import is_calendar_id, is_event_id
from feishu_mirror.storable import fit

# The Feishu calendar fields the mirror keeps, under their Feishu names, with their JSON types.
CALENDAR_FIELDS: dict[str, type] = {
    "summary": str,
    "description": str,
    "permissions": str,
    "color": int,
    "type": str,
    "summary_alias": str,
    "is_third_party": bool,
    "role": str,
}
# The Feishu event (日程) fields the mirror keeps; nested objects and lists are kept as they come.
EVENT_FIELDS: dict[str, type] = {
    "organizer_calendar_id": str,
    "summary": str,
    "description": str,
    "start_time": dict,
    "end_time": dict,
    "status": str,
    "visibility": str,
    "attendee_ability": str,
    "free_busy_status": str,
    "color": int,
    "recurrence": str,
    "is_exception": bool,
    "recurring_event_id": str,
    "location": dict,
    "vchat": dict,
    "reminders": list,
    "schemas": list,
    "event_organizer": dict,
    "app_link": str,
    "attachments": list,
    "create_time": str,
}

FieldValue = Any  # str | int | bool, and for events also Decimal, None and nested maps and lists of them
SyncKind = Literal["full", "incremental"]
SyncOutcome = Literal["synced", "busy", "not_due", "failed", "interrupted", "reauth_required", "unknown_user"]
# A user's ``status``: syncing, or waiting to authorise again (no sync runs until they do).
ACTIVE = "active"
REAUTH_REQUIRED = "reauth_required"


def _known_fields(raw: Mapping[str, Any], names: Mapping[str, type]) -> tuple[dict[str, FieldValue], dict[str, str]]:
    """The documented fields of a Feishu object that have their documented JSON type (bool is no int),
    as DynamoDB can hold them, and the ones that had to be dropped, with the reason (``storable.fit``)."""
    fields: dict[str, FieldValue] = {}
    for name, expected in names.items():
        value = raw.get(name)
        if value is not None and type(value) is expected:
            fields[name] = value
    kept, reduced, _ = fit(fields)
    return kept, reduced


class Item(Protocol):
    """Something the mirror keeps: a Feishu id (``key``), Feishu fields, and the fields it could not keep.

    An item may belong to another item of its collection (``parent_key``: an exception of a recurring
    event belongs to the master): it lives only while that one does.
    """

    @property
    def key(self) -> str:
        """The Feishu id."""

    @property
    def fields(self) -> Mapping[str, FieldValue]:
        """The Feishu fields, by Feishu name, as stored."""

    @property
    def reduced(self) -> Mapping[str, str]:
        """Fields DynamoDB could not hold as sent, each with the reason it was dropped."""

    @property
    def parent_key(self) -> str | None:
        """The key of the item this one belongs to, if any."""

    @property
    def is_parent(self) -> bool:
        """True when other items may belong to this one."""


@dataclass(frozen=True, slots=True)
class Calendar:
    """One calendar of a user's list: its id and the Feishu fields that were present."""

    calendar_id: str
    fields: Mapping[str, FieldValue]
    reduced: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The calendar_id."""
        return self.calendar_id

    @property
    def parent_key(self) -> str | None:
        """Calendars belong to no other calendar."""
        return None

    @property
    def is_parent(self) -> bool:
        """No calendar belongs to another."""
        return False

    @classmethod
    def from_feishu(cls, raw: Mapping[str, Any]) -> tuple[Calendar, bool]:
        """Parse one ``calendar_list`` entry; returns the calendar and its ``is_deleted`` flag.

        Fields of the wrong type are dropped rather than stored (Feishu's documented types are
        the contract), and so are fields DynamoDB cannot hold (named in ``reduced``); a missing or
        empty ``calendar_id`` raises ``ValueError``.
        """
        calendar_id = raw.get("calendar_id")
        if not is_calendar_id(calendar_id):
            raise ValueError("calendar entry without a valid calendar_id")
        fields, reduced = _known_fields(raw, CALENDAR_FIELDS)
        return cls(calendar_id, fields, reduced), raw.get("is_deleted") is True


@dataclass(frozen=True, slots=True)
class Event:
    """One event (日程) of a calendar: its id and the Feishu fields that were present."""

    event_id: str
    fields: Mapping[str, FieldValue]
    reduced: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The event_id."""
        return self.event_id

    @property
    def master_id(self) -> str | None:
        """For an exception of a recurring event (``is_exception``), the master's event_id."""
        master = self.fields.get("recurring_event_id")
        if self.fields.get("is_exception") is True and isinstance(master, str) and master and master != self.event_id:
            return master
        return None

    @property
    def parent_key(self) -> str | None:
        """An exception belongs to its master."""
        return self.master_id

    @property
    def is_parent(self) -> bool:
        """A recurring event's master (it has a ``recurrence``) may have exceptions."""
        return bool(self.fields.get("recurrence"))

    @classmethod
    def from_feishu(cls, raw: Mapping[str, Any]) -> tuple[Event, bool]:
        """Parse one ``items`` entry of the event list; returns the event and whether it is gone.

        ``status: cancelled`` (how a deleted event comes back in an incremental listing) counts as a
        deletion — except on an exception of a recurring event, where it is a cancelled occurrence:
        a live item that tells consumers to skip that occurrence. Fields DynamoDB cannot hold are
        dropped (named in ``reduced``). A missing or empty ``event_id`` raises ``ValueError``.
        """
        event_id = raw.get("event_id")
        if not is_event_id(event_id):
            raise ValueError("event entry without a valid event_id")
        fields, reduced = _known_fields(raw, EVENT_FIELDS)
        event = cls(event_id, fields, reduced)
        cancelled = fields.get("status") == "cancelled" and event.master_id is None
        return event, cancelled or raw.get("is_deleted") is True


@dataclass(frozen=True, slots=True)
class Page[T: Item]:
    """One response of a Feishu listing: the calendar list, or a calendar's events."""

    entries: tuple[tuple[T, bool], ...]
    has_more: bool
    page_token: str
    sync_token: str
    log_id: str = ""
    skipped_entries: int = 0


@dataclass(frozen=True, slots=True)
class Stored[T: Item]:
    """An item as the mirror holds it; ``deleted_at`` set means it is a tombstone."""

    item: T
    deleted_at: int | None = None

    @property
    def live(self) -> bool:
        """True unless the item is a tombstone."""
        return self.deleted_at is None


# Calendars whose events Feishu lists (GET /calendars/:id/events), and the roles that may read them.
EVENT_SYNCABLE_TYPES = frozenset({"primary", "shared", "resource"})
EVENT_READER_ROLES = frozenset({"reader", "writer", "owner"})


def has_readable_events(calendar: Calendar) -> bool:
    """True when the user can list this calendar's events: a primary, shared or resource calendar
    on which they are reader, writer or owner (free_busy_reader sees no events)."""
    return calendar.fields.get("type") in EVENT_SYNCABLE_TYPES and calendar.fields.get("role") in EVENT_READER_ROLES


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A user access token with its refresh token, as the OAuth token endpoint returns them."""

    access_token: str = field(repr=False)
    access_expires_at: int
    refresh_token: str | None = field(repr=False)
    refresh_expires_at: int | None
    scope: str = ""


# A token attribute of the users table: sealed bytes (``feishu_mirror.token_vault``), or a plaintext
# string written before tokens were encrypted (sealed by the user's next sync).
type StoredToken = bytes | str


@dataclass(frozen=True, slots=True)
class SealedGrant:
    """A ``TokenGrant`` whose tokens are sealed for one user: what the users table stores."""

    access_token: bytes = field(repr=False)
    access_expires_at: int
    refresh_token: bytes | None = field(repr=False)
    refresh_expires_at: int | None
    scope: str = ""


@dataclass(frozen=True, slots=True)
class UserIdentity:
    """Who authorised: from ``GET /open-apis/authen/v1/user_info``."""

    open_id: str
    name: str = ""
    union_id: str = ""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where an unfinished listing stopped, so the next invocation resumes instead of restarting."""

    kind: SyncKind
    page_token: str
    seen_ids: frozenset[str] = frozenset()
    started_at: int = 0


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of holding a user's lease, checked by every write made during that user's sync."""

    open_id: str
    owner: str


@dataclass(frozen=True, slots=True)
class CollectionId:
    """Which mirrored collection: a user's calendar list (``calendar_id`` None), or one calendar's events
    as that user sees them."""

    open_id: str
    calendar_id: str | None = None

    @property
    def is_calendar_list(self) -> bool:
        """True for the user's calendar list."""
        return self.calendar_id is None

    @property
    def events_of(self) -> str:
        """The calendar whose events this collection holds; raises ``ValueError`` for the calendar list."""
        if self.calendar_id is None:
            raise ValueError("the calendar list is no calendar's events")
        return self.calendar_id


@dataclass(frozen=True, slots=True)
class HeldSweep:
    """Deletions a full listing implied but that looked like a mass deletion, held for confirmation."""

    count: int
    first_seen_at: int


@dataclass(frozen=True, slots=True)
class ListingState:
    """Where one collection's listing stands: the calendar list of a user, or a calendar's events."""

    sync_token: str | None = None
    checkpoint: Checkpoint | None = None
    held_sweep: HeldSweep | None = None
    mirrored: int = 0
    reduced: int = 0  # live items stored reduced (see ``storable``)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user's tokens, sync state, lease and health as stored in the users table."""

    open_id: str
    status: str = ACTIVE
    name: str = ""
    access_token: StoredToken = field(default=b"", repr=False)  # sealed; opened only by the sync
    access_expires_at: int = 0
    refresh_token: StoredToken | None = field(default=None, repr=False)
    refresh_expires_at: int | None = None
    token_version: int = 0
    refresh_started_version: int | None = None  # a refresh of this version's pair went out, its answer unstored
    calendar_list: ListingState = ListingState()  # where the listing of the user's calendar list stands
    dirty_seq: int = 0
    lease_owner: str | None = None
    lease_expires_at: int = 0
    pending_invoke_until: int = 0
    subscribed_at: int | None = None
    last_success_at: int | None = None
    consecutive_failures: int = 0
    dirty_calendars: frozenset[str] = frozenset()
    pending_ping_at: int | None = None  # the earliest push (or operator resync) the mirror does not reflect yet
    due_at: int | None = None  # when the resync should start the next sync (None: not in the due index)

    def lease_active(self, now: float) -> bool:
        """True while another (or this) sync holds the user's lease."""
        return self.lease_owner is not None and self.lease_expires_at > now


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync invocation did for one user."""

    open_id: str
    outcome: SyncOutcome
    kind: str = ""
    passes: int = 0
    pages: int = 0
    upserted: int = 0
    deleted: int = 0
    held_deletions: int = 0
    error_code: int | None = None
    event_listings: int = 0
    event_pages: int = 0
    events_upserted: int = 0
    events_deleted: int = 0
    pushed_at: int | None = None  # the earliest ping (push, operator resync) this sync brought in, in whole seconds

    @property
    def wrote(self) -> bool:
        """True when the sync changed the mirror (calendars or events)."""
        return bool(self.upserted or self.deleted or self.events_upserted or self.events_deleted)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form, returned by the sync function."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class ListingOutcome:
    """How one listing ended, as it is committed: its kind, the sync token to keep (None: none, as after a
    held sweep), whether 190008 restarted it in full, the deletions it held back, the live and reduced items."""

    kind: SyncKind
    sync_token: str | None
    reset: bool
    held: HeldSweep | None
    mirrored: int
    reduced: int


@dataclass(frozen=True, slots=True)
class EventListing:
    """The sync state of one calendar's events, kept per user and calendar."""

    calendar_id: str
    state: ListingState = ListingState()
    synced_at: int | None = None
    subscribed_at: int | None = None
