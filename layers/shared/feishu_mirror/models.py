"""Domain values: calendars as Feishu describes them, listing pages, tokens and per-user sync state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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
MAX_CALENDAR_ID_LENGTH = 512

FieldValue = str | int | bool
SyncKind = Literal["full", "incremental"]
SyncOutcome = Literal["synced", "busy", "failed", "interrupted", "reauth_required", "unknown_user"]


@dataclass(frozen=True, slots=True)
class Calendar:
    """One calendar of a user's list: its id and the Feishu fields that were present."""

    calendar_id: str
    fields: Mapping[str, FieldValue]

    @classmethod
    def from_feishu(cls, raw: Mapping[str, Any]) -> tuple[Calendar, bool]:
        """Parse one ``calendar_list`` entry; returns the calendar and its ``is_deleted`` flag.

        Fields of the wrong type are dropped rather than stored (Feishu's documented types are
        the contract); a missing or empty ``calendar_id`` raises ``ValueError``.
        """
        calendar_id = raw.get("calendar_id")
        if not isinstance(calendar_id, str) or not calendar_id or len(calendar_id) > MAX_CALENDAR_ID_LENGTH:
            raise ValueError("calendar entry without a valid calendar_id")
        fields: dict[str, FieldValue] = {}
        for name, expected in CALENDAR_FIELDS.items():
            value = raw.get(name)
            if isinstance(value, str | int) and type(value) is expected:  # bool is not an int here
                fields[name] = value
        return cls(calendar_id, fields), raw.get("is_deleted") is True


@dataclass(frozen=True, slots=True)
class CalendarPage:
    """One response of ``GET /open-apis/calendar/v4/calendars``."""

    entries: tuple[tuple[Calendar, bool], ...]
    has_more: bool
    page_token: str
    sync_token: str
    log_id: str = ""
    skipped_entries: int = 0


@dataclass(frozen=True, slots=True)
class StoredCalendar:
    """A calendar as the mirror holds it; ``deleted_at`` set means it is a tombstone."""

    calendar: Calendar
    deleted_at: int | None = None

    @property
    def live(self) -> bool:
        """True unless the calendar is a tombstone."""
        return self.deleted_at is None


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A user access token with its refresh token, as the OAuth token endpoint returns them."""

    access_token: str = field(repr=False)
    access_expires_at: int
    refresh_token: str | None = field(repr=False)
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
class HeldSweep:
    """Deletions a full listing implied but that looked like a mass deletion, held for confirmation."""

    count: int
    first_seen_at: int


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user's tokens, sync state, lease and health as stored in the users table."""

    open_id: str
    status: str = "active"
    name: str = ""
    access_token: str = field(default="", repr=False)
    access_expires_at: int = 0
    refresh_token: str | None = field(default=None, repr=False)
    refresh_expires_at: int | None = None
    token_version: int = 0
    sync_token: str | None = None
    checkpoint: Checkpoint | None = None
    held_sweep: HeldSweep | None = None
    dirty_seq: int = 0
    lease_owner: str | None = None
    lease_expires_at: int = 0
    pending_invoke_until: int = 0
    subscribed_at: int | None = None
    last_success_at: int | None = None
    consecutive_failures: int = 0
    calendars_mirrored: int = 0

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

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form, returned by the sync function."""
        return {name: getattr(self, name) for name in self.__slots__}
