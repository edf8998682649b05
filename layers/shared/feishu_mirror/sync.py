"""The sync of one user: the calendar list, then the events (日程) of each readable calendar.

Under the user's lease, one ``ListingEngine`` (``feishu_mirror.listing``) runs every listing: first
the user's calendar list (state on the user item), then, for each calendar the user can read events
of, that calendar's events (state in the event-listings table) when it is new, was pushed as changed
(``dirty_calendars``), is still unfinished, or was last listed longer ago than the resync period.
Calendars that left the list (or became unreadable) take their events with them as tombstones.
Token refresh, deadlines, the lease and coalescing are handled here once for all listings: pings that
arrive meanwhile make the sync loop again before it releases the lease.

Refresh tokens are single-use, so a refresh is marked on the user before it is sent and its pair stored
at once, both conditional on the ``token_version`` the sync holds: a refresh whose answer never arrives
is never sent again (the next attempt asks the user to authorise again unless a newer pair appeared),
and a user who consents again while a sync runs keeps the new consent (see ``_refresh``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from feishu_mirror.config import Settings
from feishu_mirror.errors import (
    AccessTokenRejected,
    DeadlineExceeded,
    FeishuError,
    FeishuUnavailable,
    LeaseLost,
    MirrorError,
    ReauthorizationRequired,
    RefreshOutcomeUnknown,
    ScopeMissing,
    TokensSuperseded,
    TokenVaultUnavailable,
)
from feishu_mirror.feishu import FeishuClient
from feishu_mirror.listing import ListingEngine, ListingOutcome, MetricNames, Tally, is_mass_deletion, plan_page
from feishu_mirror.models import (
    Calendar,
    Checkpoint,
    Event,
    EventListing,
    ListingState,
    Page,
    Stored,
    SyncOutcome,
    SyncResult,
    TokenGrant,
    UserRecord,
    has_readable_events,
)
from feishu_mirror.observability import count, logger
from feishu_mirror.store import (
    ACTIVE,
    CalendarStore,
    EventListingStore,
    EventStore,
    Fence,
    UnknownUser,
    UserStore,
)
from feishu_mirror.token_vault import TokenVault, needs_sealing

__all__ = ["CalendarSync", "EventMirror", "failure_backoff", "is_mass_deletion", "lease_owner", "plan_page"]

MAX_PASSES = 5
REFRESH_MARGIN_SECONDS = 300
# A refresh is started only with this much of the invocation left: the call's connect and read timeouts
# and the retried write of the new pair, so that the answer is stored before the invocation can end.
REFRESH_TIME_NEEDED_SECONDS = 25
MAX_SUPERSEDED = 2  # new consents a single invocation follows before it leaves the rest to the next sync
MAX_FAILURE_BACKOFF = 6 * 3600
# Feishu's answers for a calendar whose events this user cannot list (gone, no access, wrong type).
EVENTS_UNAVAILABLE_CODES = frozenset({191000, 191001, 191002, 191003, 191004})

CALENDAR_METRICS = MetricNames(
    full="SyncsFull",
    incremental="SyncsIncremental",
    resumed="SyncsResumed",
    pages="PagesFetched",
    upserted="CalendarsUpserted",
    deleted="CalendarsDeleted",
    resets="SyncTokenResets",
    held="MassDeletionsHeld",
    confirmed="MassDeletionsConfirmed",
)
EVENT_METRICS = MetricNames(
    full="EventListingsFull",
    incremental="EventListingsIncremental",
    resumed="EventListingsResumed",
    pages="EventPagesFetched",
    upserted="EventsUpserted",
    deleted="EventsDeleted",
    resets="EventSyncTokenResets",
    held="EventMassDeletionsHeld",
    confirmed="EventMassDeletionsConfirmed",
)
R = TypeVar("R")


def failure_backoff(consecutive_failures: int) -> int:
    """Seconds until a failed user is tried again: 1 min doubling, capped at 6 h."""
    return int(min(MAX_FAILURE_BACKOFF, 60 * 2 ** min(consecutive_failures, 20)))


def lease_owner(request_id: str) -> str:
    """The lease owner of one sync attempt: the request id (for the logs) and a part of its own, since
    Lambda may run two copies of one asynchronous event with the same request id."""
    return f"{request_id[:100]}/{secrets.token_hex(8)}"


# ------------------------------------------------------------------------------ the engine
@dataclass(slots=True)
class _Tokens:
    """The token pair a sync works with (opened), and the ``token_version`` it was stored under."""

    access_token: str = field(repr=False)
    access_expires_at: int
    refresh_token: str | None = field(repr=False)
    refresh_expires_at: int | None
    version: int
    refresh_in_doubt: bool = False  # a refresh of this pair went out and its answer was never stored


@dataclass(slots=True)
class _Attempt:
    """Mutable bookkeeping of one sync attempt (one invocation, under one lease owner)."""

    fence: Fence
    deadline: float
    stored: UserRecord  # the user as last read: its tokens are opened on first use
    tokens: _Tokens | None = None
    passes: int = 0
    calendars: Tally = field(default_factory=Tally)
    events: Tally = field(default_factory=Tally)
    handled_calendars: set[str] = field(default_factory=set)
    held_events: dict[str, int] = field(default_factory=dict)  # calendar_id → event deletions held back
    calendars_reduced: int = 0  # live calendars stored reduced
    events_reduced: dict[str, int] = field(default_factory=dict)  # calendar_id → live events stored reduced
    events_due_at: int | None = None  # when the earliest calendar not listed now is due
    subscription_checked: bool = False
    superseded: int = 0  # new consents followed so far

    @property
    def token_version(self) -> int:
        """The ``token_version`` of the pair this sync works with (every token write is conditional on it)."""
        return self.tokens.version if self.tokens else self.stored.token_version

    def adopt(self, user: UserRecord) -> None:
        """Work with ``user``'s stored tokens from now on (opened again on first use)."""
        self.stored, self.tokens = user, None


@dataclass(frozen=True, slots=True)
class EventMirror:
    """Where events and their listing state live; without it a sync mirrors calendars only."""

    events: EventStore
    listings: EventListingStore


class CalendarSync:
    """Runs the sync for one user at a time (see the module docstring)."""

    def __init__(
        self,
        *,
        users: UserStore,
        calendars: CalendarStore,
        feishu: FeishuClient,
        settings: Settings,
        vault: TokenVault,
        events: EventMirror | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._vault = vault
        self._calendars = calendars
        self._events = events
        self._feishu = feishu
        self._settings = settings
        self._clock = clock
        self._engine = ListingEngine(mass_delete_confirm_seconds=settings.mass_delete_confirm_seconds, clock=clock)

    def _now(self) -> int:
        return int(self._clock())

    def sync_user(self, open_id: str, *, owner: str, deadline: float, lease_seconds: int) -> SyncResult:
        """Sync one user. Expected failures are recorded on the user and returned, not raised.

        ``owner`` identifies this attempt (``lease_owner``: unique even for two copies of one Lambda
        event); ``deadline`` is a ``time.monotonic()`` value; the lease expires after ``lease_seconds``
        even if we die.
        """
        now = self._now()
        try:
            user = self._users.acquire_lease(open_id, owner, now, now + lease_seconds)
        except UnknownUser:
            logger.warning("sync_unknown_user")
            return SyncResult(open_id, "unknown_user")
        if user is None:
            count("SyncSkippedBusy")
            return SyncResult(open_id, "busy")
        fence = Fence(open_id, owner)
        if user.status != ACTIVE:
            self._users.release_after_failure(fence, code=None, message="", due_at=now, failed=False)
            return SyncResult(open_id, "reauth_required")
        return self._guarded(user, _Attempt(fence, deadline, user))

    def _guarded(self, user: UserRecord, attempt: _Attempt) -> SyncResult:  # noqa: PLR0911 - one return per kind of failure
        """Run the passes and map each expected failure to a recorded outcome."""
        fence = attempt.fence
        try:
            return self._loop(user, attempt)
        except ReauthorizationRequired as exc:
            return self._reauthorization_required(attempt, exc)
        except TokensSuperseded:
            return self._superseded(attempt)
        except DeadlineExceeded:
            count("SyncsInterrupted")
            logger.warning("sync_interrupted", extra={"pages": attempt.calendars.pages + attempt.events.pages})
            self._users.release_after_failure(fence, code=None, message="", due_at=self._now(), failed=False)
            return self._result(attempt, "interrupted")
        except TokenVaultUnavailable as exc:
            # KMS down or refusing: the stored tokens stay as they are; the user is tried again later.
            count("TokenVaultFailures")
            logger.warning("token_vault_unavailable", extra={"error": exc.message})
            due = self._now() + failure_backoff(user.consecutive_failures)
            self._users.release_after_failure(fence, code=None, message=exc.message, due_at=due)
            return self._result(attempt, "failed")
        except LeaseLost:
            count("SyncLeaseLost")
            logger.error("sync_lease_lost")
            return self._result(attempt, "failed")
        except FeishuError as exc:
            count("SyncFailures")
            logger.warning("sync_failed", extra={"code": exc.code, "error": exc.message, "log_id": exc.log_id})
            due = self._now() + failure_backoff(user.consecutive_failures)
            self._users.release_after_failure(fence, code=exc.code, message=exc.message, due_at=due)
            return self._result(attempt, "failed", exc.code)
        except Exception:
            # A bug or an AWS outage: release so a retry can start at once, then let Lambda retry.
            self._release_quietly(fence, user.consecutive_failures)
            raise

    def _reauthorization_required(self, attempt: _Attempt, exc: ReauthorizationRequired) -> SyncResult:
        """Mark the user ``reauth_required`` (with the cause and any missing scope), unless their tokens
        changed meanwhile: a user who consented again keeps the new consent."""
        missing_scope = exc.missing_scope if isinstance(exc, ScopeMissing) else None
        marked = self._users.mark_reauth_required(
            attempt.fence,
            self._now(),
            token_version=attempt.token_version,
            code=exc.code,
            message=exc.message,
            cause=exc.cause,
            missing_scope=missing_scope,
        )
        if not marked:
            return self._superseded(attempt)
        count("UsersNeedingReauth")
        logger.warning(
            "reauth_required",
            extra={"code": exc.code, "cause": exc.cause, "missing_scope": missing_scope, "log_id": exc.log_id},
        )
        return self._result(attempt, "reauth_required", exc.code)

    def _superseded(self, attempt: _Attempt) -> SyncResult:
        """The user's tokens changed under this sync (a new consent): go on with them, or leave the user due."""
        count("SyncsSuperseded")
        logger.info("sync_superseded_by_new_tokens")
        fresh = self._users.get(attempt.fence.open_id)
        attempt.superseded += 1
        if (
            fresh is not None
            and fresh.status == ACTIVE
            and fresh.lease_active(self._now())
            and fresh.lease_owner == attempt.fence.owner
            and attempt.superseded <= MAX_SUPERSEDED
        ):
            attempt.adopt(fresh)
            return self._guarded(fresh, attempt)
        self._users.release_after_failure(attempt.fence, code=None, message="", due_at=self._now(), failed=False)
        return self._result(attempt, "interrupted")

    def _release_quietly(self, fence: Fence, failures: int) -> None:
        try:
            due = self._now() + failure_backoff(failures)
            self._users.release_after_failure(fence, code=None, message="internal error", due_at=due)
        except Exception:
            logger.exception("lease_release_failed")

    def _result(
        self, attempt: _Attempt, outcome: SyncOutcome, code: int | None = None, *, pushed_at: int | None = None
    ) -> SyncResult:
        calendars, events = attempt.calendars, attempt.events
        return SyncResult(
            attempt.fence.open_id,
            outcome,
            kind=calendars.kind,
            passes=attempt.passes,
            pages=calendars.pages,
            upserted=calendars.upserted,
            deleted=calendars.deleted,
            held_deletions=calendars.held + events.held,
            error_code=code,
            event_listings=events.listings,
            event_pages=events.pages,
            events_upserted=events.upserted,
            events_deleted=events.deleted,
            pushed_at=pushed_at,
        )

    def _loop(self, user: UserRecord, attempt: _Attempt) -> SyncResult:
        for _ in range(MAX_PASSES):
            attempt.passes += 1
            listed = self._engine.sync_collection(
                self._calendar_list(attempt), _calendar_state(user), attempt.calendars
            )
            attempt.calendars_reduced = listed.reduced
            held = listed.held is not None
            if user.checkpoint is not None and not held:
                # The resumed listing began in an earlier invocation, possibly before the changes that
                # started this one: follow it with an incremental pass from the token it just committed.
                count("SyncResumedThenIncremental")
                fresh_user = self._users.get(attempt.fence.open_id)
                if fresh_user is not None:
                    user = self._adopt_tokens(attempt, fresh_user)
                    continue
            held = self._sync_events(user, attempt) or held
            self._assert_subscription(user, attempt)
            now = self._now()
            due = now + (self._settings.mass_delete_confirm_seconds if held else self._settings.stale_after_seconds)
            if attempt.events_due_at is not None:
                due = max(now, min(due, attempt.events_due_at))
            fresh = self._users.release_after_success(
                attempt.fence,
                now,
                seen_dirty_seq=user.dirty_seq,
                due_at=due,
                handled_calendars=frozenset(attempt.handled_calendars & user.dirty_calendars),
                held_event_deletions=sum(attempt.held_events.values()),
                items_reduced=attempt.calendars_reduced + sum(attempt.events_reduced.values()),
            )
            if fresh is None:
                count("SyncsCompleted")
                calendars, events = attempt.calendars, attempt.events
                logger.info(
                    "sync_completed",
                    extra={
                        "kind": calendars.kind,
                        "passes": attempt.passes,
                        "pages": calendars.pages,
                        "upserted": calendars.upserted,
                        "deleted": calendars.deleted,
                        "event_listings": events.listings,
                        "events_upserted": events.upserted,
                        "events_deleted": events.deleted,
                    },
                )
                return self._result(attempt, "synced", pushed_at=user.pending_ping_at)
            count("SyncRepeatedForPing")
            user = self._adopt_tokens(attempt, fresh)
        # Pings keep coming: stop here and leave the user due so the resync comes back soon.
        self._users.release_after_failure(attempt.fence, code=None, message="", due_at=self._now(), failed=False)
        return self._result(attempt, "synced")

    @staticmethod
    def _adopt_tokens(attempt: _Attempt, fresh: UserRecord) -> UserRecord:
        """Work on with the stored pair when it is newer than ours (the user consented again meanwhile)."""
        if fresh.token_version != attempt.token_version:
            logger.info("newer_tokens_adopted")
            attempt.adopt(fresh)
        return fresh

    # -------------------------------------------------------------------------- the collections
    def _calendar_list(self, attempt: _Attempt) -> _CalendarList:
        return _CalendarList(self, attempt)

    def _sync_events(self, user: UserRecord, attempt: _Attempt) -> bool:
        """List the events of each calendar that needs it; returns True when deletions were held back."""
        mirror = self._events
        if mirror is None:
            return False
        now = self._now()
        calendars = self._calendars.load_all(attempt.fence.open_id)
        readable = {cid for cid, stored in calendars.items() if stored.live and has_readable_events(stored.item)}
        listings = mirror.listings.load_all(attempt.fence.open_id)
        for calendar_id in sorted(listings.keys() - readable):
            self._retire_events(mirror, attempt, calendar_id)
        attempt.held_events = {
            cid: listing.state.held_sweep.count
            for cid, listing in listings.items()
            if cid in readable and listing.state.held_sweep
        }
        attempt.events_reduced = {cid: listing.state.reduced for cid, listing in listings.items() if cid in readable}
        # A push for a calendar whose events are not mirrored (gone, unreadable) has nothing to list.
        attempt.handled_calendars |= user.dirty_calendars - readable
        held = False
        failure: FeishuError | None = None
        for calendar_id in sorted(readable):
            listing = listings.get(calendar_id)
            if not self._events_due(listing, calendar_id, user, attempt, now):
                if listing is not None and listing.synced_at is not None:
                    # Come back when this calendar's events are due, even if the user is not yet.
                    due = listing.synced_at + self._settings.stale_after_seconds
                    attempt.events_due_at = min(attempt.events_due_at or due, due)
                continue
            try:
                outcome = self._list_events(mirror, attempt, calendar_id, listing)
            except (ReauthorizationRequired, AccessTokenRejected, FeishuUnavailable):
                raise  # the user's authorisation, or Feishu itself: no other calendar would fare better
            except FeishuError as exc:
                if exc.code in EVENTS_UNAVAILABLE_CODES:
                    # The calendar list and this calendar disagree for a moment (just deleted, access just
                    # revoked): skip it; the next calendar listing settles which one is right.
                    count("EventListingsUnavailable")
                    logger.info("events_unavailable", extra={"calendar_id": calendar_id, "code": exc.code})
                    continue
                # One calendar Feishu will not list must not starve the others: list them, then fail the
                # sync with this calendar's error (recorded on the user, retried with a backoff).
                count("EventListingFailures")
                logger.warning(
                    "event_listing_failed", extra={"calendar_id": calendar_id, "code": exc.code, "log_id": exc.log_id}
                )
                failure = failure or FeishuError(
                    exc.code, f"events of {calendar_id}: {exc.message}", http_status=exc.http_status, log_id=exc.log_id
                )
                continue
            attempt.held_events.pop(calendar_id, None)
            attempt.events_reduced[calendar_id] = outcome.reduced
            if outcome.held is not None:
                held = True
                attempt.held_events[calendar_id] = outcome.held.count
            attempt.handled_calendars.add(calendar_id)
            self._assert_event_subscription(mirror, attempt, calendar_id, listing)
        if failure is not None:
            raise failure
        return held

    def _list_events(
        self, mirror: EventMirror, attempt: _Attempt, calendar_id: str, listing: EventListing | None
    ) -> ListingOutcome:
        """One calendar's event listing (its held sweep, if deletions were held back, and its counts); a
        resumed one is followed by an incremental catch-up."""
        collection = _CalendarEvents(self, attempt, mirror, calendar_id)
        if listing is None:
            mirror.listings.begin(attempt.fence, self._now(), calendar_id)
        state = listing.state if listing else ListingState()
        while True:
            outcome = self._engine.sync_collection(collection, state, attempt.events)
            if state.checkpoint is None or outcome.held:
                return outcome
            # The resumed listing began in an earlier invocation, possibly before the change that
            # started this one: follow it with an incremental pass from the token it just committed.
            count("EventListingResumedThenIncremental")
            fresh = mirror.listings.get(attempt.fence.open_id, calendar_id)
            if fresh is None:
                return outcome
            state = fresh.state

    def _events_due(
        self, listing: EventListing | None, calendar_id: str, user: UserRecord, attempt: _Attempt, now: int
    ) -> bool:
        """New calendar, pushed as changed, unfinished, held, or not listed for a resync period."""
        if calendar_id in attempt.handled_calendars:  # listed in an earlier pass: again only if pushed
            return calendar_id in user.dirty_calendars
        if listing is None or calendar_id in user.dirty_calendars:
            return True
        state = listing.state
        if state.checkpoint or state.held_sweep or not state.sync_token or listing.synced_at is None:
            return True
        return now - listing.synced_at >= self._settings.stale_after_seconds - EVENTS_STALE_MARGIN_SECONDS

    def _retire_events(self, mirror: EventMirror, attempt: _Attempt, calendar_id: str) -> None:
        """A calendar left the list or became unreadable: tombstone its events and forget its listing."""
        stored = mirror.events.load_all(attempt.fence.open_id, calendar_id)
        live = tuple(s.item for s in stored.values() if s.live)
        if live:
            mirror.events.apply(attempt.fence, self._now(), calendar_id, deletions=live)
            attempt.events.deleted += len(live)
            count(EVENT_METRICS.deleted, len(live))
        mirror.listings.delete(attempt.fence, self._now(), calendar_id)
        count("EventListingsRetired")
        logger.info("events_retired", extra={"calendar_id": calendar_id, "deleted": len(live)})

    def _assert_event_subscription(
        self, mirror: EventMirror, attempt: _Attempt, calendar_id: str, listing: EventListing | None
    ) -> None:
        """Subscribe to the calendar's event changes when never done or due again; never fatal."""
        now = self._now()
        subscribed_at = listing.subscribed_at if listing else None
        if subscribed_at and now - subscribed_at < self._settings.subscription_refresh_seconds:
            return
        try:
            self._with_token(
                attempt,
                lambda token: self._feishu.subscribe_calendar_events(token, calendar_id, deadline=attempt.deadline),
            )
        except (ReauthorizationRequired, RefreshOutcomeUnknown):
            raise
        except (FeishuError, DeadlineExceeded) as exc:
            count("EventSubscriptionFailures")
            logger.warning(
                "event_subscription_failed", extra={"calendar_id": calendar_id, "code": getattr(exc, "code", None)}
            )
            return
        mirror.listings.mark_subscribed(attempt.fence, now, calendar_id)
        count("EventSubscriptionsAsserted")

    # -------------------------------------------------------------------------- Feishu calls
    def _with_token(self, attempt: _Attempt, call: Callable[[str], R]) -> R:
        """One Feishu call with the user's access token, refreshing it once if Feishu says it expired."""
        try:
            return call(self._access_token(attempt))
        except AccessTokenRejected:
            logger.info("access_token_rejected")
            return call(self._refresh(attempt))

    def _tokens(self, attempt: _Attempt) -> _Tokens:
        """The user's tokens in plaintext, opened on first use (one KMS call per sync). Plaintext tokens
        from before encryption are sealed in place now. Raises ``TokenVaultUnavailable``."""
        if attempt.tokens is None:
            user = attempt.stored
            opened = self._vault.open(user.open_id, user.access_token, user.refresh_token)
            tokens = _Tokens(
                opened.access_token,
                user.access_expires_at,
                opened.refresh_token,
                user.refresh_expires_at,
                user.token_version,
                refresh_in_doubt=user.refresh_started_version == user.token_version,
            )
            if needs_sealing(user.access_token, user.refresh_token):
                grant = TokenGrant(tokens.access_token, tokens.access_expires_at, tokens.refresh_token, None)
                sealed = self._vault.seal(user.open_id, grant)
                if self._users.seal_stored_tokens(attempt.fence, self._now(), sealed, token_version=user.token_version):
                    count("TokensSealed")
            attempt.tokens = tokens
        return attempt.tokens

    def _access_token(self, attempt: _Attempt) -> str:
        tokens = self._tokens(attempt)
        if tokens.access_token and tokens.access_expires_at - self._now() > REFRESH_MARGIN_SECONDS:
            return tokens.access_token
        return self._refresh(attempt)

    def _refresh(self, attempt: _Attempt) -> str:
        """Rotate the token pair (we hold the lease, so no other sync can) and persist it at once.

        The refresh token is sent at most once: the user is marked before the request goes out and the
        new pair (or, for a refresh Feishu certainly did not process, the removal of the mark) is stored
        after it, both only while the stored tokens are still ours (``TokensSuperseded`` otherwise). A
        refresh whose outcome is unknown fails this attempt; the next one finds the mark and asks the
        user to authorise again, unless a newer pair was stored meanwhile.
        """
        tokens = self._tokens(attempt)
        if tokens.refresh_in_doubt:
            raise ReauthorizationRequired(
                -1,
                "an earlier token refresh got no answer, so its refresh token may be spent; it is not sent again",
                cause="refresh_outcome_unknown",
            )
        if not tokens.refresh_token or (tokens.refresh_expires_at and tokens.refresh_expires_at <= self._now()):
            raise ReauthorizationRequired(20037, "refresh token missing or expired", cause="refresh_token_expired")
        if attempt.deadline - time.monotonic() < REFRESH_TIME_NEEDED_SECONDS:
            raise DeadlineExceeded("not enough time left to refresh the token pair and store it")
        # The data key first: Feishu's refresh consumes the old refresh token, so nothing may fail between
        # its answer and the write of the new pair that a retry could not redo.
        sealer = self._vault.sealer(attempt.fence.open_id)
        self._users.begin_refresh(attempt.fence, self._now(), tokens.version)
        try:
            grant = self._feishu.refresh_access_token(tokens.refresh_token, deadline=attempt.deadline)
        except RefreshOutcomeUnknown as exc:
            count("TokenRefreshFailures")
            count("TokenRefreshesUnanswered")
            tokens.refresh_in_doubt = True
            raise self._unanswered_refresh(attempt, exc) from exc
        except ReauthorizationRequired:
            count("TokenRefreshFailures")
            raise
        except (FeishuError, DeadlineExceeded):
            count("TokenRefreshFailures")  # Feishu certainly did not process it: the token may be sent again
            self._users.end_refresh(attempt.fence.open_id, tokens.version)
            raise
        count("TokenRefreshes")
        version = self._users.save_tokens(
            attempt.fence.open_id, self._now(), sealer.seal(grant), token_version=tokens.version
        )
        kept = grant.refresh_token is None  # Feishu did not rotate it: the stored one stays valid
        attempt.tokens = _Tokens(
            grant.access_token,
            grant.access_expires_at,
            tokens.refresh_token if kept else grant.refresh_token,
            tokens.refresh_expires_at if kept or not grant.refresh_expires_at else grant.refresh_expires_at,
            version,
        )
        return grant.access_token

    def _unanswered_refresh(self, attempt: _Attempt, exc: RefreshOutcomeUnknown) -> MirrorError:
        """After a refresh whose outcome is unknown: ``TokensSuperseded`` when a newer pair is stored
        meanwhile, else the error that fails this attempt (the mark stays for the next one)."""
        fresh = self._users.get(attempt.fence.open_id)
        if fresh is not None and fresh.token_version != attempt.token_version:
            return TokensSuperseded(f"tokens of {attempt.fence.open_id} replaced")
        logger.warning("token_refresh_unanswered", extra={"error": exc.message, "log_id": exc.log_id})
        return RefreshOutcomeUnknown(
            exc.code,
            f"a token refresh got no answer ({exc.message}); its refresh token is not sent again",
            http_status=exc.http_status,
            log_id=exc.log_id,
        )

    def _assert_subscription(self, user: UserRecord, attempt: _Attempt) -> None:
        """Re-subscribe to calendar changes when it was never done or is due again; never fatal."""
        if attempt.subscription_checked:
            return
        attempt.subscription_checked = True
        now = self._now()
        if user.subscribed_at and now - user.subscribed_at < self._settings.subscription_refresh_seconds:
            return
        try:
            self._feishu.subscribe_calendar_changes(self._access_token(attempt), deadline=attempt.deadline)
        except (ReauthorizationRequired, RefreshOutcomeUnknown):
            raise
        except (FeishuError, DeadlineExceeded) as exc:
            count("SubscriptionFailures")
            logger.warning("subscription_failed", extra={"code": getattr(exc, "code", None)})
            return
        self._users.mark_subscribed(attempt.fence.open_id, now)
        count("SubscriptionsAsserted")


EVENTS_STALE_MARGIN_SECONDS = 300


def _calendar_state(user: UserRecord) -> ListingState:
    return ListingState(
        user.sync_token, user.checkpoint, user.held_sweep, user.calendars_mirrored, user.calendars_reduced
    )


class _CalendarList:
    """The user's calendar list as a ``Collection``: items in the calendars table, state on the user."""

    name = "calendars"
    metrics = CALENDAR_METRICS

    def __init__(self, sync: CalendarSync, attempt: _Attempt) -> None:
        self._sync, self._attempt = sync, attempt
        self._fence = attempt.fence

    def fetch(self, *, page_token: str, sync_token: str | None) -> Page[Calendar]:
        sync, attempt = self._sync, self._attempt
        return sync._with_token(
            attempt,
            lambda token: sync._feishu.list_calendars(
                token,
                deadline=attempt.deadline,
                page_size=sync._settings.page_size,
                page_token=page_token or None,
                sync_token=None if page_token else sync_token,
            ),
        )

    def load_all(self) -> dict[str, Stored[Calendar]]:
        return self._sync._calendars.load_all(self._fence.open_id)

    def load_some(self, keys: Iterable[str]) -> dict[str, Stored[Calendar]]:
        return self._sync._calendars.load_some(self._fence.open_id, keys)

    def load_children(self, parent_keys: Iterable[str]) -> dict[str, Stored[Calendar]]:
        del parent_keys  # no calendar belongs to another
        return {}

    def apply(self, now: int, upserts: tuple[Calendar, ...], deletions: tuple[Calendar, ...]) -> None:
        self._sync._calendars.apply(self._fence, now, upserts=upserts, deletions=deletions)

    def save_checkpoint(self, now: int, checkpoint: Checkpoint) -> None:
        self._sync._users.save_checkpoint(self._fence, now, checkpoint)

    def discard_sync_state(self, now: int) -> None:
        self._sync._users.discard_sync_state(self._fence, now)

    def commit(self, now: int, *, sync_token: str | None, outcome: ListingOutcome, kind: str, reset: bool) -> None:
        self._sync._users.commit_listing(
            self._fence,
            now,
            sync_token=sync_token,
            calendars_mirrored=outcome.mirrored,
            calendars_reduced=outcome.reduced,
            kind=kind,
            held_sweep=outcome.held,
            reset=reset,
        )


class _CalendarEvents:
    """One calendar's events as a ``Collection``: items in the events table, state in event listings."""

    name = "events"
    metrics = EVENT_METRICS

    def __init__(self, sync: CalendarSync, attempt: _Attempt, mirror: EventMirror, calendar_id: str) -> None:
        self._sync, self._attempt, self._mirror = sync, attempt, mirror
        self._fence = attempt.fence
        self._calendar_id = calendar_id

    def fetch(self, *, page_token: str, sync_token: str | None) -> Page[Event]:
        sync, attempt = self._sync, self._attempt
        return sync._with_token(
            attempt,
            lambda token: sync._feishu.list_events(
                token,
                self._calendar_id,
                deadline=attempt.deadline,
                page_size=sync._settings.page_size,
                page_token=page_token or None,
                sync_token=None if page_token else sync_token,
            ),
        )

    def load_all(self) -> dict[str, Stored[Event]]:
        return self._mirror.events.load_all(self._fence.open_id, self._calendar_id)

    def load_some(self, keys: Iterable[str]) -> dict[str, Stored[Event]]:
        return self._mirror.events.load_some(self._fence.open_id, self._calendar_id, keys)

    def load_children(self, parent_keys: Iterable[str]) -> dict[str, Stored[Event]]:
        return self._mirror.events.load_exceptions(self._fence.open_id, self._calendar_id, parent_keys)

    def apply(self, now: int, upserts: tuple[Event, ...], deletions: tuple[Event, ...]) -> None:
        self._mirror.events.apply(self._fence, now, self._calendar_id, upserts=upserts, deletions=deletions)

    def save_checkpoint(self, now: int, checkpoint: Checkpoint) -> None:
        self._mirror.listings.save_checkpoint(self._fence, now, self._calendar_id, checkpoint)

    def discard_sync_state(self, now: int) -> None:
        self._mirror.listings.discard_sync_state(self._fence, now, self._calendar_id)

    def commit(self, now: int, *, sync_token: str | None, outcome: ListingOutcome, kind: str, reset: bool) -> None:
        self._mirror.listings.commit_listing(
            self._fence,
            now,
            self._calendar_id,
            sync_token=sync_token,
            mirrored=outcome.mirrored,
            reduced=outcome.reduced,
            kind=kind,
            held_sweep=outcome.held,
            reset=reset,
        )
