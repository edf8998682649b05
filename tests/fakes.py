"""In-memory fakes of the narrow ports the domain declares, for unit tests and simulations.

``FakeUsers`` is the users table: it satisfies ``pings.PingTargets``, ``resync.DueUsers``,
``sync.SyncLeases``, ``sync.UserAuthorization`` (with ``sync_tokens.TokenRecords``),
``onboarding.Authorizations`` and ``status.HealthReads``. ``FakeListings`` is every collection's listing
state (``mirror_collection.ListingRecords``, ``status.EventSummaries``), ``FakeMirror`` a mirror table
(``mirror_collection.MirroredItems``, ``status.MirroredCalendars``), ``FakeFeishu`` Feishu's calendar API
and token endpoint (``sync.CalendarApi``), ``FakeDataKeys`` KMS (``token_vault.DataKeys``) and
``RecordingInvoker`` the Lambda API (``invoker.SyncInvoker``); ``FakeWorld`` wires them into the domain
services on a ``FakeClock``.

They keep the adapters' conditional semantics, which is what the domain relies on: a ping marks a user
dirty and claims an invocation only while no sync runs or is pending; the lease is never taken while
held (not even by its owner) and a release succeeds only if no ping came since (``dirty_seq``); every
write under a fence fails with ``LeaseLost`` once the lease is gone; token writes are conditional on
``token_version``. ``tests/integration/test_fakes_match_dynamodb.py`` runs the same scenarios against
the fakes and the DynamoDB adapters. Everything is a dict lookup, so thousands of users fit in a test.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from feishu_mirror.concurrency import THREADS, Concurrency
from feishu_mirror.config import Settings
from feishu_mirror.dynamodb.listings import MAX_CHECKPOINT_BYTES, encode_ids
from feishu_mirror.dynamodb.user_health import HEALTH_ATTRIBUTES
from feishu_mirror.errors import (
    AccessTokenRejected,
    LeaseLost,
    ReauthorizationRequired,
    SyncTokenExpired,
    TokensSuperseded,
    UnknownUser,
)
from feishu_mirror.models import (
    ACTIVE,
    REAUTH_REQUIRED,
    Calendar,
    Checkpoint,
    CollectionId,
    Event,
    EventListing,
    Fence,
    Item,
    ListingOutcome,
    ListingState,
    Page,
    SealedGrant,
    Stored,
    StoredToken,
    SyncResult,
    TokenGrant,
    UserIdentity,
    UserRecord,
)
from feishu_mirror.pings import PingDispatcher
from feishu_mirror.resync import Resync
from feishu_mirror.sync import CalendarSync
from feishu_mirror.token_vault import TokenVault

TRANSACTION_ITEMS = 99  # items per fenced transaction, as the adapter writes them


# ------------------------------------------------------------------------------ the users table
@dataclass
class FakeUser:
    """One user's item: the attributes the adapters read and write (None: the attribute is absent)."""

    open_id: str
    status: str = ACTIVE
    name: str = ""
    access_token: StoredToken | None = None
    access_expires_at: int = 0
    refresh_token: StoredToken | None = None
    refresh_expires_at: int | None = None
    token_version: int = 0
    refresh_started_version: int | None = None
    calendar_list: ListingState = field(default_factory=ListingState)
    last_sync_kind: str | None = None
    full_resync_count: int = 0
    dirty_seq: int = 0
    dirty_calendars: set[str] = field(default_factory=set)
    lease_owner: str | None = None
    lease_expires_at: int | None = None
    pending_invoke_until: int | None = None
    pending_ping_at: int | None = None
    due_at: int | None = None
    in_due_index: bool = False  # has ``due_shard`` (set by every authorisation)
    subscribed_at: int | None = None
    authorized_at: int | None = None
    created_at: int | None = None
    refreshed_at: int | None = None
    last_ping_at: int | None = None
    last_attempt_at: int | None = None
    last_success_at: int | None = None
    last_error_code: int | None = None
    last_error_message: str | None = None
    consecutive_failures: int = 0
    reauth_required_at: int | None = None
    reauth_cause: str | None = None
    missing_scope: str | None = None
    held_event_deletions: int | None = None
    items_reduced: int | None = None

    def record(self) -> UserRecord:
        """As ``dynamodb.users.user_record`` reads the item."""
        return UserRecord(
            open_id=self.open_id,
            status=self.status,
            name=self.name,
            access_token=self.access_token or b"",
            access_expires_at=self.access_expires_at,
            refresh_token=self.refresh_token,
            refresh_expires_at=self.refresh_expires_at,
            token_version=self.token_version,
            refresh_started_version=self.refresh_started_version,
            calendar_list=self.calendar_list,
            dirty_seq=self.dirty_seq,
            lease_owner=self.lease_owner,
            lease_expires_at=self.lease_expires_at or 0,
            pending_invoke_until=self.pending_invoke_until or 0,
            subscribed_at=self.subscribed_at,
            last_success_at=self.last_success_at,
            consecutive_failures=self.consecutive_failures,
            dirty_calendars=frozenset(self.dirty_calendars),
            pending_ping_at=self.pending_ping_at,
            due_at=self.due_at,
        )

    def health(self) -> dict[str, Any]:
        """The allow-listed attributes an operator sees (``dynamodb.user_health.HEALTH_ATTRIBUTES``)."""
        state = self.calendar_list
        values: dict[str, Any] = {
            "calendars_mirrored": state.mirrored,
            "held_sweep": {"count": state.held_sweep.count, "first_seen_at": state.held_sweep.first_seen_at}
            if state.held_sweep
            else None,
            "checkpoint": {"kind": state.checkpoint.kind, "started_at": state.checkpoint.started_at}
            if state.checkpoint
            else None,
        }
        found: dict[str, Any] = {}
        for name in {path.split(".")[0] for path in HEALTH_ATTRIBUTES}:
            value = values[name] if name in values else getattr(self, name, None)
            if value is not None and not (name == "full_resync_count" and value == 0):
                found[name] = value
        return found

    def lease_held_by(self, fence: Fence, now: int) -> bool:
        """``LEASE_HELD``: the fence's owner holds an unexpired lease."""
        return self.lease_owner == fence.owner and (self.lease_expires_at or 0) > now

    def claimable(self, now: int) -> bool:
        """Active, with no sync pending and none running."""
        return (
            self.status == ACTIVE
            and (self.pending_invoke_until is None or self.pending_invoke_until <= now)
            and (self.lease_expires_at is None or self.lease_expires_at <= now)
        )


class FakeUsers:
    """The users table in memory (see the module docstring)."""

    def __init__(self) -> None:
        self.items: dict[str, FakeUser] = {}

    def add(self, open_id: str, **attributes: Any) -> FakeUser:
        """A user as an authorisation leaves them (due now, in the due index), with ``attributes`` set."""
        user = FakeUser(open_id, due_at=0, in_due_index=True, created_at=0, token_version=1, access_token=b"at")
        for name, value in attributes.items():
            setattr(user, name, value)
        self.items[open_id] = user
        return user

    def get(self, open_id: str) -> UserRecord | None:
        """The user's record, or None."""
        user = self.items.get(open_id)
        return user.record() if user else None

    # -------------------------------------------------------------- pings and claims
    def _ping(self, user: FakeUser, now: int, calendar_ids: frozenset[str]) -> None:
        user.dirty_seq += 1
        user.dirty_calendars |= calendar_ids
        user.last_ping_at = now
        user.pending_ping_at = now if user.pending_ping_at is None else user.pending_ping_at

    def mark_dirty(self, open_id: str, now: int, calendar_ids: frozenset[str] = frozenset()) -> UserRecord | None:
        """Bump ``dirty_seq`` and make an active user due; the record after it, else None."""
        user = self.items.get(open_id)
        if user is None or user.status != ACTIVE:
            return None
        self._ping(user, now, calendar_ids)
        user.due_at = now
        return user.record()

    def ping_and_claim(self, open_id: str, now: int, until: int, calendar_ids: frozenset[str] = frozenset()) -> bool:
        """Mark dirty and claim the invocation, only when claimable."""
        user = self.items.get(open_id)
        if user is None or not user.claimable(now):
            return False
        self._ping(user, now, calendar_ids)
        user.pending_invoke_until = user.due_at = until
        return True

    def claim_invocation(self, open_id: str, now: int, until: int) -> bool:
        """Claim the right to start a sync, only when claimable."""
        user = self.items.get(open_id)
        if user is None or not user.claimable(now):
            return False
        user.pending_invoke_until = user.due_at = until
        return True

    # -------------------------------------------------------------- the lease
    def acquire_lease(self, open_id: str, owner: str, now: int, expires_at: int) -> UserRecord | None:
        """Take the lease unless any sync holds it; raises ``UnknownUser``."""
        user = self.items.get(open_id)
        if user is None:
            raise UnknownUser(open_id)
        if user.lease_expires_at is not None and user.lease_expires_at > now:
            return None
        user.lease_owner, user.lease_expires_at, user.last_attempt_at = owner, expires_at, now
        user.pending_invoke_until = None
        return user.record()

    def release_after_success(
        self,
        fence: Fence,
        now: int,
        *,
        seen_dirty_seq: int,
        due_at: int,
        handled_calendars: frozenset[str] = frozenset(),
        held_event_deletions: int = 0,
        items_reduced: int = 0,
    ) -> UserRecord | None:
        """Release unless a ping came since ``seen_dirty_seq`` (then the fresh record); ``LeaseLost``."""
        user = self.items.get(fence.open_id)
        if user is None or user.lease_owner != fence.owner:
            raise LeaseLost(f"lease on {fence.open_id} lost")
        if user.dirty_seq != seen_dirty_seq:
            return user.record()
        user.last_success_at, user.consecutive_failures, user.due_at = now, 0, due_at
        user.lease_owner = user.lease_expires_at = user.pending_ping_at = None
        user.last_error_code = user.last_error_message = None
        user.held_event_deletions = held_event_deletions or None
        user.items_reduced = items_reduced or None
        user.dirty_calendars -= handled_calendars
        return None

    def release_after_failure(
        self, fence: Fence, *, code: int | None, message: str, due_at: int, failed: bool = True
    ) -> None:
        """Release (if still ours), recording the error and when to try again."""
        user = self.items.get(fence.open_id)
        if user is None or user.lease_owner != fence.owner:
            return
        user.due_at, user.lease_owner, user.lease_expires_at = due_at, None, None
        if failed:
            user.last_error_message = message[:500]
            user.consecutive_failures += 1
            if code is not None:
                user.last_error_code = code

    # -------------------------------------------------------------- the resync's indexes
    def due_users(self, now: int, limit: int) -> list[str]:
        """Users in the due index whose ``due_at`` has passed, oldest first (ties by open_id), at most ``limit``.

        The adapter takes ``limit`` per shard and merges: the same users."""
        due = sorted(
            (user.due_at, open_id)
            for open_id, user in self.items.items()
            if user.in_due_index and user.due_at is not None and user.due_at <= now
        )
        return [open_id for _, open_id in due[:limit]]

    def count_awaiting_reauth(self) -> int:
        """How many users must authorise again."""
        return sum(1 for user in self.items.values() if user.status == REAUTH_REQUIRED)

    # -------------------------------------------------------------- authorisation and tokens
    def save_authorization(self, identity: UserIdentity, grant: SealedGrant, now: int) -> None:
        """Store a fresh authorisation (creating the user): active, a new ``token_version``, due now."""
        user = self.items.setdefault(identity.open_id, FakeUser(identity.open_id, created_at=now))
        user.status, user.name = ACTIVE, identity.name
        user.access_token, user.access_expires_at = grant.access_token, grant.access_expires_at
        user.refresh_token = grant.refresh_token
        user.refresh_expires_at = (grant.refresh_expires_at or 0) if grant.refresh_token else None
        user.token_version += 1
        user.authorized_at, user.consecutive_failures = now, 0
        user.in_due_index, user.due_at = True, now
        user.last_error_code = user.last_error_message = user.refresh_started_version = None
        user.reauth_cause = user.missing_scope = None

    def mark_subscribed(self, open_id: str, now: int) -> None:
        """Record the calendar-change subscription (an existing user only)."""
        if open_id in self.items:
            self.items[open_id].subscribed_at = now

    def begin_refresh(self, fence: Fence, now: int, token_version: int) -> None:
        """Mark the refresh token as being spent; ``TokensSuperseded`` or ``LeaseLost``."""
        user = self.items.get(fence.open_id)
        if user is not None and user.lease_held_by(fence, now) and user.token_version == token_version:
            user.refresh_started_version = token_version
            return
        if user is not None and user.token_version != token_version:
            raise TokensSuperseded(f"tokens of {fence.open_id} replaced")
        raise LeaseLost(f"lease on {fence.open_id} lost")

    def end_refresh(self, open_id: str, token_version: int) -> None:
        """Clear the refresh mark while the tokens are still ``token_version``'s."""
        user = self.items.get(open_id)
        if user is not None and user.token_version == token_version:
            user.refresh_started_version = None

    def save_tokens(self, open_id: str, now: int, grant: SealedGrant, *, token_version: int) -> int:
        """Store a rotated pair in place of ``token_version``'s (or find it stored); ``TokensSuperseded``."""
        user = self.items.get(open_id)
        written_already = (
            user is not None and user.token_version == token_version + 1 and user.access_token == grant.access_token
        )
        if user is None or not (user.token_version == token_version or written_already):
            raise TokensSuperseded(f"tokens of {open_id} replaced")
        user.access_token, user.access_expires_at = grant.access_token, grant.access_expires_at
        user.token_version, user.refreshed_at, user.refresh_started_version = token_version + 1, now, None
        if grant.refresh_token:
            user.refresh_token = grant.refresh_token
            if grant.refresh_expires_at:
                user.refresh_expires_at = grant.refresh_expires_at
        return token_version + 1

    def seal_stored_tokens(self, fence: Fence, now: int, sealed: SealedGrant, *, token_version: int) -> bool:
        """Replace plaintext tokens with sealed ones under the lease, while still ``token_version``'s."""
        user = self.items.get(fence.open_id)
        if user is None or not user.lease_held_by(fence, now) or user.token_version != token_version:
            return False
        user.access_token = sealed.access_token
        if sealed.refresh_token:
            user.refresh_token = sealed.refresh_token
        return True

    def mark_reauth_required(
        self,
        fence: Fence,
        now: int,
        *,
        token_version: int,
        code: int,
        message: str,
        cause: str,
        missing_scope: str | None = None,
    ) -> bool:
        """The user must authorise again (only under the lease, while the tokens are ``token_version``'s)."""
        user = self.items.get(fence.open_id)
        if user is None or user.lease_owner != fence.owner or user.token_version != token_version:
            return False
        user.status, user.last_error_code, user.last_error_message = REAUTH_REQUIRED, code, message[:500]
        user.reauth_required_at, user.reauth_cause, user.missing_scope = now, cause, (missing_scope or None)
        user.lease_owner = user.lease_expires_at = user.due_at = None
        user.access_token = user.refresh_token = None
        user.pending_invoke_until = user.pending_ping_at = user.refresh_started_version = None
        return True

    # -------------------------------------------------------------- health
    def get_health(self, open_id: str) -> dict[str, Any] | None:
        """One user's allow-listed attributes, or None."""
        user = self.items.get(open_id)
        return user.health() if user else None

    def list_health(self, limit: int, start: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of users' allow-listed attributes (in open_id order) and where the next page starts."""
        ids = sorted(open_id for open_id in self.items if start is None or open_id > start)
        page = ids[:limit]
        return [self.items[open_id].health() for open_id in page], (page[-1] if len(ids) > limit else None)


# ------------------------------------------------------------------------------ listing state
@dataclass
class FakeEventListing:
    """One calendar's event-listing item."""

    state: ListingState = field(default_factory=ListingState)
    synced_at: int | None = None
    subscribed_at: int | None = None
    last_sync_kind: str | None = None
    full_resync_count: int = 0


class FakeListings:
    """Every collection's listing state: the calendar list's on the ``FakeUsers`` user, each calendar's
    events' in an event-listings map; every write under the lease."""

    def __init__(self, users: FakeUsers) -> None:
        self._users = users
        self.items: dict[str, dict[str, FakeEventListing]] = {}  # open_id → calendar_id → its event listing

    def _fenced(self, fence: Fence, now: int) -> FakeUser:
        user = self._users.items.get(fence.open_id)
        if user is None or not user.lease_held_by(fence, now):
            raise LeaseLost(f"lease on {fence.open_id} lost")
        return user

    def _listing(self, fence: Fence, calendar_id: str) -> FakeEventListing:
        return self.items.setdefault(fence.open_id, {}).setdefault(
            calendar_id, FakeEventListing()
        )  # an update creates it

    def _state(self, fence: Fence, now: int, collection: CollectionId) -> tuple[ListingState, Any]:
        user = self._fenced(fence, now)
        if collection.calendar_id is None:
            return user.calendar_list, user
        listing = self._listing(fence, collection.calendar_id)
        return listing.state, listing

    def save_checkpoint(self, fence: Fence, now: int, collection: CollectionId, checkpoint: Checkpoint) -> bool:
        """Remember how far the listing got; False when its seen ids would not fit in an item."""
        if len(checkpoint.seen_ids) > 1000 and len(encode_ids(checkpoint.seen_ids)) > MAX_CHECKPOINT_BYTES:
            return False
        state, holder = self._state(fence, now, collection)
        self._set(holder, replace(state, checkpoint=checkpoint))
        return True

    @staticmethod
    def _set(holder: Any, state: ListingState) -> None:
        if isinstance(holder, FakeUser):
            holder.calendar_list = state
        else:
            holder.state = state

    def commit(self, fence: Fence, now: int, collection: CollectionId, outcome: ListingOutcome) -> None:
        """After the last page: the new sync token, the counts and the held sweep; no checkpoint."""
        _, holder = self._state(fence, now, collection)
        self._set(holder, ListingState(outcome.sync_token, None, outcome.held, outcome.mirrored, outcome.reduced))
        holder.last_sync_kind = outcome.kind
        holder.full_resync_count += int(outcome.reset)
        if isinstance(holder, FakeEventListing):
            holder.synced_at = now

    def discard_sync_state(self, fence: Fence, now: int, collection: CollectionId) -> None:
        """Forget the sync token and checkpoint."""
        state, holder = self._state(fence, now, collection)
        self._set(holder, replace(state, sync_token=None, checkpoint=None))

    def event_listings(self, open_id: str) -> dict[str, EventListing]:
        """Every calendar's event-listing state of the user."""
        return {
            cid: EventListing(cid, listing.state, listing.synced_at, listing.subscribed_at)
            for cid, listing in self.items.get(open_id, {}).items()
        }

    def event_listing(self, open_id: str, calendar_id: str) -> EventListing | None:
        """One calendar's event-listing state, or None."""
        listing = self.items.get(open_id, {}).get(calendar_id)
        return EventListing(calendar_id, listing.state, listing.synced_at, listing.subscribed_at) if listing else None

    def begin_events(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Record a calendar's first listing."""
        self._fenced(fence, now)
        self._listing(fence, calendar_id)

    def mark_events_subscribed(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Record the calendar's event-change subscription."""
        self._fenced(fence, now)
        self._listing(fence, calendar_id).subscribed_at = now

    def retire_events(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Forget a calendar that left the user's list."""
        self._fenced(fence, now)
        self.items.get(fence.open_id, {}).pop(calendar_id, None)

    def summaries(self, open_id: str) -> dict[str, dict[str, Any]]:
        """Each calendar's event counts and times."""
        return {
            cid: {
                name: value
                for name, value in (
                    ("events_mirrored", listing.state.mirrored),
                    ("events_reduced", listing.state.reduced),
                    ("synced_at", listing.synced_at),
                    ("subscribed_at", listing.subscribed_at),
                    ("last_sync_kind", listing.last_sync_kind),
                )
                if value is not None
            }
            for cid, listing in self.items.get(open_id, {}).items()
        }


# ------------------------------------------------------------------------------ the mirror tables
class FakeMirror[T: Item]:
    """A mirror table (calendars or events) in memory: one partition per collection; writes under the lease."""

    def __init__(self, users: FakeUsers) -> None:
        self._users = users
        self.partitions: dict[CollectionId, dict[str, Stored[T]]] = {}
        self.write_requests = 0  # transactions the adapter would have sent

    def load_all(self, collection: CollectionId) -> dict[str, Stored[T]]:
        """Every item of the collection, tombstones included."""
        return dict(self.partitions.get(collection, {}))

    def load_some(self, collection: CollectionId, keys: Iterable[str]) -> dict[str, Stored[T]]:
        """The items with these keys that exist."""
        stored = self.partitions.get(collection, {})
        return {key: stored[key] for key in set(keys) if key in stored}

    def load_children(self, collection: CollectionId, parent_keys: Iterable[str]) -> dict[str, Stored[T]]:
        """The items that belong to these parents (an event's exceptions), tombstones included."""
        parents = set(parent_keys)
        stored = self.partitions.get(collection, {})
        return {key: s for key, s in stored.items() if s.item.parent_key in parents}

    def apply(
        self,
        fence: Fence,
        now: int,
        collection: CollectionId,
        *,
        upserts: Sequence[T] = (),
        deletions: Sequence[T] = (),
    ) -> int:
        """Write changed items and tombstones; ``LeaseLost`` without the lease."""
        user = self._users.items.get(fence.open_id)
        if user is None or not user.lease_held_by(fence, now):
            raise LeaseLost(f"lease on {fence.open_id} lost")
        partition = self.partitions.setdefault(collection, {})
        for item in upserts:
            partition[item.key] = Stored(item)
        for item in deletions:
            partition[item.key] = Stored(item, deleted_at=now)
        written = len(upserts) + len(deletions)
        self.write_requests += -(-written // TRANSACTION_ITEMS)
        return written

    def live(self, collection: CollectionId) -> dict[str, T]:
        """The live items of a collection, by key (for assertions)."""
        return {key: s.item for key, s in self.partitions.get(collection, {}).items() if s.live}


# ------------------------------------------------------------------------------ KMS and Lambda
class FakeDataKeys:
    """KMS's data keys in memory: a wrapped key is the key with a marker (real AES-GCM seals with it)."""

    def generate(self, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        """A new 256-bit data key and its "wrapped" form."""
        key = os.urandom(32)
        return key, b"fake-kms:" + context["open_id"].encode() + b":" + key

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The key back, only for the user it was made for."""
        prefix = b"fake-kms:" + context["open_id"].encode() + b":"
        assert wrapped.startswith(prefix), "a data key unwrapped for another user"
        return wrapped[len(prefix) :]


class RecordingInvoker:
    """The Lambda API: records every sync started; ``fail`` makes the next invokes fail."""

    def __init__(self) -> None:
        self.invoked: list[tuple[str, str, str]] = []
        self.claims: list[int] = []  # each invocation's ``claimed_at``
        self.fail = 0

    def invoke(self, open_id: str, reason: str, *, delivery_id: str = "", claimed_at: int = 0) -> None:
        """Record (open_id, reason, delivery_id) and ``claimed_at``, or raise as a failed hand-over."""
        if self.fail:
            self.fail -= 1
            raise ConnectionError("the Lambda API is down")
        self.invoked.append((open_id, reason, delivery_id))
        self.claims.append(claimed_at)

    @property
    def open_ids(self) -> list[str]:
        """Whom syncs were started for, in order."""
        return [open_id for open_id, _, _ in self.invoked]


# ------------------------------------------------------------------------------ Feishu
@dataclass
class _Listed:
    """One collection as Feishu holds it: items by key with the version they last changed at."""

    items: dict[str, tuple[dict[str, Any], bool, int]] = field(default_factory=dict)  # key → (raw, deleted, version)
    version: int = 0

    def put(self, key: str, raw: dict[str, Any], *, deleted: bool = False) -> None:
        self.version += 1
        self.items[key] = (raw, deleted, self.version)


@dataclass
class _FeishuUser:
    access_token: str
    refresh_token: str
    calendars: _Listed = field(default_factory=_Listed)
    events: dict[str, _Listed] = field(default_factory=dict)
    subscribed: bool = False
    subscribed_calendars: set[str] = field(default_factory=set)


class FakeFeishu:
    """Feishu's calendar API and token endpoint in memory (``sync.CalendarApi``).

    A full listing pages through the live items by key (page tokens ``<version>:<offset>``); its last
    page carries the sync token ``<version>``; an incremental listing answers every change since that
    version (deletions with ``is_deleted``), paged the same way. ``fail`` queues an exception for the next
    call of a method; ``before_call`` runs before each call (a push arriving mid-sync, say). Tokens rotate
    on refresh; a spent or unknown refresh token is refused (``ReauthorizationRequired``).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        access_seconds: int = 7200,
        answer_seconds: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.answer_seconds = answer_seconds  # each call's answer time (taken before it is answered)
        self._sleep = sleep
        self.users: dict[str, _FeishuUser] = {}
        self.calls: list[str] = []
        self._access_tokens: dict[str, str] = {}  # every access token ever issued → its user
        self._refresh_tokens: dict[str, str] = {}
        self.failures: dict[str, list[Exception]] = {}
        self.before_call: Callable[[str], None] | None = None
        self.expired_sync_tokens: set[str] = set()
        self._clock = clock
        self._access_seconds = access_seconds
        self._ids = itertools.count(1)

    # -------------------------------------------------------------- setting up Feishu's side
    def add_user(self, open_id: str) -> TokenGrant:
        """A Feishu user with a primary calendar; returns the grant of their first consent."""
        grant = self._grant(open_id)
        self.users[open_id] = _FeishuUser(grant.access_token, grant.refresh_token or "")
        self._issued(open_id, grant)
        self.put_calendar(open_id, f"{open_id}-primary", summary=open_id, type="primary", role="owner")
        return grant

    def _issued(self, open_id: str, grant: TokenGrant) -> None:
        self._access_tokens[grant.access_token] = open_id
        self._refresh_tokens[grant.refresh_token or ""] = open_id

    def _grant(self, open_id: str) -> TokenGrant:
        n = next(self._ids)
        now = int(self._clock())
        return TokenGrant(f"at-{open_id}-{n}", now + self._access_seconds, f"rt-{open_id}-{n}", now + 30 * 86400)

    def put_calendar(self, open_id: str, calendar_id: str, **fields: Any) -> str:
        """Create or change a calendar (defaults: a shared calendar the user reads)."""
        raw = {"calendar_id": calendar_id, "type": "shared", "role": "reader", **fields}
        self.users[open_id].calendars.put(calendar_id, raw)
        return calendar_id

    def delete_calendar(self, open_id: str, calendar_id: str) -> None:
        """Delete a calendar (its events go with it)."""
        user = self.users[open_id]
        raw, _, _ = user.calendars.items[calendar_id]
        user.calendars.put(calendar_id, raw, deleted=True)
        user.events.pop(calendar_id, None)

    def put_event(self, open_id: str, calendar_id: str, event_id: str, **fields: Any) -> str:
        """Create or change an event."""
        self.users[open_id].events.setdefault(calendar_id, _Listed()).put(event_id, {"event_id": event_id, **fields})
        return event_id

    def delete_event(self, open_id: str, calendar_id: str, event_id: str) -> None:
        """Delete an event."""
        listed = self.users[open_id].events[calendar_id]
        raw, _, _ = listed.items[event_id]
        listed.put(event_id, raw, deleted=True)

    def expire_access_token(self, open_id: str) -> None:
        """The user's access token stops working (a refresh gets a new one)."""
        self.users[open_id].access_token = f"expired-{next(self._ids)}"

    def fail(self, method: str, *errors: Exception) -> None:
        """The next calls of ``method`` raise these, in order."""
        self.failures.setdefault(method, []).extend(errors)

    def truth(self, open_id: str, calendar_id: str | None = None) -> set[str]:
        """The keys Feishu holds live: the user's calendars, or one calendar's events."""
        user = self.users[open_id]
        listed = user.calendars if calendar_id is None else user.events.get(calendar_id, _Listed())
        return {key for key, (_, deleted, _) in listed.items.items() if not deleted}

    # -------------------------------------------------------------- the API
    def _call(self, method: str, open_id: str | None = None, access_token: str | None = None) -> None:
        self.calls.append(method)
        if self.answer_seconds:
            self._sleep(self.answer_seconds)
        if self.before_call is not None:
            self.before_call(method)
        queued = self.failures.get(method)
        if queued:
            raise queued.pop(0)
        if access_token is not None and (open_id is None or self.users[open_id].access_token != access_token):
            raise AccessTokenRejected(99991677, "user access token expired")

    def _owner(self, access_token: str) -> str:
        open_id = self._access_tokens.get(access_token, "")
        return open_id if open_id and self.users[open_id].access_token == access_token else ""

    def _page[T: Item](
        self,
        listed: _Listed,
        parse: Callable[[Mapping[str, Any]], tuple[T, bool]],
        *,
        page_size: int,
        page_token: str | None,
        sync_token: str | None,
    ) -> Page[T]:
        """A full listing pages through the live items by key; an increment through every item changed
        since its sync token. Either ends with the sync token of the version its first page saw, so what
        changes meanwhile comes again in the next increment."""
        if page_token:
            since_text, version_text, after = page_token.split("|", 2)
            since, version = int(since_text), int(version_text)
        else:
            if sync_token is not None and (sync_token in self.expired_sync_tokens or int(sync_token) > listed.version):
                raise SyncTokenExpired(190008, "page_token or sync_token expired")
            since, version, after = (int(sync_token) if sync_token else -1), listed.version, ""
        keys = sorted(
            key
            for key, (_, deleted, changed) in listed.items.items()
            if key > after and (changed > since if since >= 0 else not deleted)
        )
        chosen = keys[:page_size]
        entries = []
        for key in chosen:
            raw, deleted, _ = listed.items[key]
            entries.append(parse({**raw, "is_deleted": True} if deleted else raw))
        more = len(keys) > page_size
        return Page(
            entries=tuple(entries),
            has_more=more,
            page_token=f"{since}|{version}|{chosen[-1]}" if more else "",
            sync_token="" if more else str(version),
        )

    def list_calendars(
        self,
        access_token: str,
        *,
        deadline: float,
        page_size: int = 1000,
        page_token: str | None = None,
        sync_token: str | None = None,
    ) -> Page[Calendar]:
        """One page of the user's calendar list."""
        open_id = self._owner(access_token)
        self._call("list_calendars", open_id or None, access_token)
        calendars = self.users[open_id].calendars
        return self._page(
            calendars, Calendar.from_feishu, page_size=page_size, page_token=page_token, sync_token=sync_token
        )

    def list_events(
        self,
        access_token: str,
        calendar_id: str,
        *,
        deadline: float,
        page_size: int = 1000,
        page_token: str | None = None,
        sync_token: str | None = None,
    ) -> Page[Event]:
        """One page of a calendar's events."""
        open_id = self._owner(access_token)
        self._call("list_events", open_id or None, access_token)
        listed = self.users[open_id].events.setdefault(calendar_id, _Listed())
        return self._page(listed, Event.from_feishu, page_size=page_size, page_token=page_token, sync_token=sync_token)

    def subscribe_calendar_changes(self, access_token: str, *, deadline: float) -> None:
        """Subscribe the user to changes of their calendar list."""
        open_id = self._owner(access_token)
        self._call("subscribe_calendar_changes", open_id or None, access_token)
        self.users[open_id].subscribed = True

    def subscribe_calendar_events(self, access_token: str, calendar_id: str, *, deadline: float) -> None:
        """Subscribe the user to changes of one calendar's events."""
        open_id = self._owner(access_token)
        self._call("subscribe_calendar_events", open_id or None, access_token)
        self.users[open_id].subscribed_calendars.add(calendar_id)

    def refresh_access_token(self, refresh_token: str, *, deadline: float) -> TokenGrant:
        """A new pair for the user's current refresh token (which is spent by it)."""
        self._call("refresh_access_token")
        open_id = self._refresh_tokens.get(refresh_token, "")
        user = self.users.get(open_id)
        if user is None or user.refresh_token != refresh_token:
            raise ReauthorizationRequired(20064, "refresh token revoked or already used")
        grant = self._grant(open_id)
        user.access_token, user.refresh_token = grant.access_token, grant.refresh_token or ""
        self._issued(open_id, grant)
        return grant


# ------------------------------------------------------------------------------ a deployment in memory
class FakeClock:
    """Time as the services see it, moved only by the test (``advance``) or by what sleeps on it."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        """Epoch seconds."""
        return self.now

    def monotonic(self) -> float:
        """Deadlines run on the same time."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """A wait passes at once, moving the clock."""
        self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        """Let time pass."""
        self.now += seconds


class FakeWorld:
    """The domain services on the fakes: one deployment's tables, Feishu, KMS and Lambda in memory, on a
    ``FakeClock``. Each service is built as ``composition`` builds it, with the fakes in the adapters' places."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: FakeClock | None = None,
        concurrency: Concurrency = THREADS,
    ) -> None:
        self.settings = settings or Settings()
        self.clock = clock or FakeClock()
        self.concurrency = concurrency
        self.users = FakeUsers()
        self.listings = FakeListings(self.users)
        self.calendars: FakeMirror[Calendar] = FakeMirror(self.users)
        self.events: FakeMirror[Event] = FakeMirror(self.users)
        self.feishu = FakeFeishu(clock=self.clock, sleep=self.clock.sleep)
        self.invoker = RecordingInvoker()
        self.vault = TokenVault(FakeDataKeys())

    def engine(self, *, events: bool = True) -> CalendarSync:
        """The sync engine (``events`` False: calendars only, as without the events tables)."""
        return CalendarSync(
            leases=self.users,
            authorization=self.users,
            calendars=self.calendars,
            listings=self.listings,
            events=self.events if events else None,
            feishu=self.feishu,
            settings=self.settings,
            vault=self.vault,
            clock=self.clock,
            monotonic=self.clock.monotonic,
            concurrency=self.concurrency,
        )

    def pings(self) -> PingDispatcher:
        """The ping dispatcher, starting syncs through the recording invoker."""
        return PingDispatcher(self.users, self.invoker, clock=self.clock)

    def resync(self, *, max_users: int | None = None) -> Resync:
        """The scheduled resync."""
        limit = max_users or self.settings.resync_max_users_per_run
        return Resync(self.users, self.invoker, max_users=limit, clock=self.clock)

    def onboard(self, open_id: str) -> str:
        """A Feishu user (with a primary calendar) who authorised the mirror: tokens stored sealed, due now."""
        grant = self.feishu.add_user(open_id)
        now = int(self.clock())
        self.users.save_authorization(UserIdentity(open_id, open_id), self.vault.seal(open_id, grant), now)
        return open_id

    def sync(
        self, open_id: str, *, owner: str = "", seconds: float = 300, events: bool = True, claimed_at: int = 0
    ) -> SyncResult:
        """One sync invocation of ``seconds`` (its lease outlives it by 30 s)."""
        return self.engine(events=events).sync_user(
            open_id,
            owner=owner or f"sync-{next(_owners)}",
            deadline=self.clock.monotonic() + seconds,
            lease_seconds=int(seconds) + 30,
            claimed_at=claimed_at,
        )

    def live_calendars(self, open_id: str) -> set[str]:
        """The mirror's live calendars of the user."""
        return set(self.calendars.live(CollectionId(open_id)))

    def live_events(self, open_id: str, calendar_id: str) -> set[str]:
        """The mirror's live events of one calendar of the user."""
        return set(self.events.live(CollectionId(open_id, calendar_id)))


_owners = itertools.count(1)
