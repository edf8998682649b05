"""The sync of one user: the calendar list, then the events (日程) of each readable calendar.

Under the user's lease, one ``ListingEngine`` (``feishu_mirror.listing``) runs every listing: first
the user's calendar list, then, for each calendar the user can read events of, that calendar's events
when it is new, was pushed as changed (``dirty_calendars``), is still unfinished, or was last listed
longer ago than the resync period. Calendars that left the list (or became unreadable) take their
events with them as tombstones. Token refresh (``sync_tokens``), deadlines, the lease and coalescing are
handled here once for all listings: pings that arrive meanwhile make the sync loop again before it
releases the lease.

What the sync needs from storage and from Feishu is declared as narrow protocols: here (``SyncLeases``,
``UserAuthorization``, ``CalendarApi``), in ``mirror_collection`` (``MirroredItems``, ``ListingRecords``)
and ``sync_tokens`` (``TokenRecords``); the DynamoDB adapters (``feishu_mirror.dynamodb``) and the Feishu
client satisfy them, and ``composition`` wires them.

Above 500 lines on purpose: one user's sync is one algorithm (the lease, the passes, the calendar list,
each calendar's events, subscriptions, and what each failure leaves on the user) over one invocation's
state (``_Attempt``); its parts that stand alone live in ``listing``, ``mirror_collection`` and ``sync_tokens``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from feishu_mirror.concurrency import THREADS, Concurrency
from feishu_mirror.config import Settings
from feishu_mirror.errors import (
    AccessTokenRejected,
    DeadlineExceeded,
    FeishuError,
    FeishuUnavailable,
    LeaseLost,
    ReauthorizationRequired,
    RefreshOutcomeUnknown,
    ScopeMissing,
    TokensSuperseded,
    TokenVaultUnavailable,
    UnknownUser,
)
from feishu_mirror.listing import ListingEngine, MetricNames, Tally, is_mass_deletion, plan_page
from feishu_mirror.mirror_collection import ListingRecords, MirrorCollection, MirroredItems
from feishu_mirror.models import (
    ACTIVE,
    Calendar,
    CollectionId,
    Event,
    EventListing,
    Fence,
    Item,
    ListingOutcome,
    ListingState,
    Page,
    SyncOutcome,
    SyncResult,
    UserRecord,
    has_readable_events,
)
from feishu_mirror.observability import count, logger
from feishu_mirror.sync_tokens import TokenRecords, TokenRefresher, TokenSession
from feishu_mirror.token_vault import TokenVault

__all__ = ["CalendarSync", "failure_backoff", "is_mass_deletion", "lease_owner", "plan_page"]

MAX_PASSES = 5
MAX_SUPERSEDED = 2  # new consents a single invocation follows before it leaves the rest to the next sync
MAX_FAILURE_BACKOFF = 6 * 3600
EVENTS_STALE_MARGIN_SECONDS = 300
# Calendars whose events are listed side by side: Feishu answers in 100-300 ms, so about 4 calls in flight
# fill one API's 1,000/min; each calendar's listing is followed by its subscription (another API), and the
# rate gate holds every API to its budget whatever the number of workers.
EVENT_LISTING_WORKERS = 8
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
    resumed_then_incremental="SyncResumedThenIncremental",
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
    resumed_then_incremental="EventListingResumedThenIncremental",
)


@dataclass(frozen=True, slots=True)
class SubscriptionMetrics:
    """What re-asserting one kind of change subscription counts and logs under."""

    asserted: str
    failed: str
    failure_log: str


CALENDAR_SUBSCRIPTION = SubscriptionMetrics(
    asserted="SubscriptionsAsserted",
    failed="SubscriptionFailures",
    failure_log="subscription_failed",
)
EVENT_SUBSCRIPTION = SubscriptionMetrics(
    asserted="EventSubscriptionsAsserted",
    failed="EventSubscriptionFailures",
    failure_log="event_subscription_failed",
)


def failure_backoff(consecutive_failures: int) -> int:
    """Seconds until a failed user is tried again: 1 min doubling, capped at 6 h."""
    return int(min(MAX_FAILURE_BACKOFF, 60 * 2 ** min(consecutive_failures, 20)))


def lease_owner(request_id: str) -> str:
    """The lease owner of one sync attempt: the request id (for the logs) and a part of its own, since
    Lambda may run two copies of one asynchronous event with the same request id."""
    return f"{request_id[:100]}/{secrets.token_hex(8)}"


# ------------------------------------------------------------------------------ the ports
class SyncLeases(Protocol):
    """The user's record and the sync's lease (``dynamodb.user_schedule.SyncSchedule``)."""

    def get(self, open_id: str) -> UserRecord | None:
        """The user's record (strongly consistent), or None."""
        ...

    def acquire_lease(self, open_id: str, owner: str, now: int, expires_at: int) -> UserRecord | None:
        """Take the lease; None while another sync holds it. Raises ``UnknownUser``."""
        ...

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
        """Release unless a ping came since ``seen_dirty_seq`` (then the fresh record). Raises ``LeaseLost``."""
        ...

    def release_after_failure(
        self, fence: Fence, *, code: int | None, message: str, due_at: int, failed: bool = True
    ) -> None:
        """Release, recording the error and when to try again."""
        ...


class UserAuthorization(TokenRecords, Protocol):
    """The user's authorisation as a sync changes it (``dynamodb.user_tokens.UserTokens``)."""

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
        """Drop the dead tokens and say why; False when the user consented again meanwhile."""
        ...

    def mark_subscribed(self, open_id: str, now: int) -> None:
        """Record that the calendar-change subscription was (re)asserted."""
        ...


class CalendarApi(TokenRefresher, Protocol):
    """The Feishu calls a sync makes (``feishu.FeishuClient``)."""

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
        ...

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
        ...

    def subscribe_calendar_changes(self, access_token: str, *, deadline: float) -> None:
        """Subscribe the user to changes of their calendar list."""
        ...

    def subscribe_calendar_events(self, access_token: str, calendar_id: str, *, deadline: float) -> None:
        """Subscribe the user to changes of one calendar's events."""
        ...


# ------------------------------------------------------------------------------ one invocation
@dataclass(slots=True)
class _Attempt:
    """Mutable bookkeeping of one invocation."""

    fence: Fence
    deadline: float
    user: UserRecord  # the user as last read
    tokens: TokenSession
    calendars: Tally = field(default_factory=Tally)
    events: Tally = field(default_factory=Tally)
    handled_calendars: set[str] = field(default_factory=set)
    held_events: dict[str, int] = field(default_factory=dict)  # calendar_id → event deletions held back
    calendars_reduced: int = 0  # live calendars stored reduced
    events_reduced: dict[str, int] = field(default_factory=dict)  # calendar_id → live events stored reduced
    events_due_at: int | None = None  # when the earliest calendar not listed now is due
    subscription_checked: bool = False
    superseded: int = 0  # new consents followed so far

    def adopt(self, user: UserRecord) -> None:
        """Go on with ``user`` as read just now, and with its stored tokens."""
        self.user = user
        self.tokens.adopt(user)

    def refresh(self, fresh: UserRecord) -> None:
        """Go on with ``fresh``; with its tokens only when they are newer than ours (a new consent)."""
        self.user = fresh
        self.tokens.adopt_if_newer(fresh)


# ------------------------------------------------------------------------------ the engine
class CalendarSync:
    """Runs the sync for one user at a time (see the module docstring); ``events`` None mirrors calendars only."""

    def __init__(
        self,
        *,
        leases: SyncLeases,
        authorization: UserAuthorization,
        calendars: MirroredItems[Calendar],
        listings: ListingRecords,
        feishu: CalendarApi,
        settings: Settings,
        vault: TokenVault,
        events: MirroredItems[Event] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        concurrency: Concurrency = THREADS,
        event_workers: int = EVENT_LISTING_WORKERS,
    ) -> None:
        self._concurrency = concurrency
        self._event_workers = event_workers
        self._leases = leases
        self._authorization = authorization
        self._calendars = calendars
        self._events = events
        self._listings = listings
        self._feishu = feishu
        self._settings = settings
        self._vault = vault
        self._clock = clock
        self._monotonic = monotonic
        self._engine = ListingEngine(mass_delete_confirm_seconds=settings.mass_delete_confirm_seconds, clock=clock)

    def _now(self) -> int:
        return int(self._clock())

    def sync_user(
        self, open_id: str, *, owner: str, deadline: float, lease_seconds: int, claimed_at: int = 0
    ) -> SyncResult:
        """Sync one user. Expected failures are recorded on the user and returned, not raised.

        ``owner`` identifies this attempt (``lease_owner``: unique even for two copies of one Lambda
        event); ``deadline`` is a ``monotonic()`` value; the lease expires after ``lease_seconds``
        even if we die. ``claimed_at`` (a sync the resync started: when it claimed the user): a user synced
        since then, with no push waiting, was synced by another invocation (the claim lapsed while this one
        waited in Lambda's queue and a later run claimed the user again): nothing is done (``not_due``).
        """
        now = self._now()
        try:
            user = self._leases.acquire_lease(open_id, owner, now, now + lease_seconds)
        except UnknownUser:
            logger.warning("sync_unknown_user")
            return SyncResult(open_id, "unknown_user")
        if user is None:
            count("SyncSkippedBusy")
            return SyncResult(open_id, "busy")
        fence = Fence(open_id, owner)
        if user.status != ACTIVE:
            self._leases.release_after_failure(fence, code=None, message="", due_at=now, failed=False)
            return SyncResult(open_id, "reauth_required")
        if claimed_at and self._synced_since(user, claimed_at):
            count("SyncSkippedNotDue")
            self._leases.release_after_failure(fence, code=None, message="", due_at=user.due_at or now, failed=False)
            return SyncResult(open_id, "not_due")
        tokens = TokenSession(
            user,
            fence,
            deadline,
            records=self._authorization,
            vault=self._vault,
            refresher=self._feishu,
            clock=self._clock,
            monotonic=self._monotonic,
            lock=self._concurrency.lock(),
        )
        return self._guarded(_Attempt(fence, deadline, user, tokens))

    @staticmethod
    def _synced_since(user: UserRecord, claimed_at: int) -> bool:
        """Whether a sync completed after ``claimed_at`` and no push waits for another. Times are whole
        seconds: one that completed in the second of the claim may have started before what made the user
        due, so it does not count."""
        synced = user.last_success_at is not None and user.last_success_at > claimed_at
        return synced and user.pending_ping_at is None and not user.dirty_calendars

    def _guarded(self, attempt: _Attempt) -> SyncResult:  # noqa: PLR0911 - one return per kind of failure
        """Run the passes and map each expected failure to a recorded outcome."""
        fence, failures = attempt.fence, attempt.user.consecutive_failures
        try:
            return self._loop(attempt)
        except ReauthorizationRequired as exc:
            return self._reauthorization_required(attempt, exc)
        except TokensSuperseded:
            return self._superseded(attempt)
        except DeadlineExceeded:
            count("SyncsInterrupted")
            logger.warning("sync_interrupted", extra={"pages": attempt.calendars.pages + attempt.events.pages})
            self._leases.release_after_failure(fence, code=None, message="", due_at=self._now(), failed=False)
            return self._result(attempt, "interrupted")
        except TokenVaultUnavailable as exc:
            # KMS down or refusing: the stored tokens stay as they are; the user is tried again later.
            count("TokenVaultFailures")
            logger.warning("token_vault_unavailable", extra={"error": exc.message})
            due = self._now() + failure_backoff(failures)
            self._leases.release_after_failure(fence, code=None, message=exc.message, due_at=due)
            return self._result(attempt, "failed")
        except LeaseLost:
            count("SyncLeaseLost")
            logger.error("sync_lease_lost")
            return self._result(attempt, "failed")
        except FeishuError as exc:
            count("SyncFailures")
            logger.warning("sync_failed", extra={"code": exc.code, "error": exc.message, "log_id": exc.log_id})
            due = self._now() + failure_backoff(failures)
            self._leases.release_after_failure(fence, code=exc.code, message=exc.message, due_at=due)
            return self._result(attempt, "failed", exc.code)
        except Exception:
            # A bug or an AWS outage: release so a retry can start at once, then let Lambda retry.
            self._release_quietly(fence, failures)
            raise

    def _reauthorization_required(self, attempt: _Attempt, exc: ReauthorizationRequired) -> SyncResult:
        """Mark the user ``reauth_required`` (with the cause and any missing scope), unless their tokens
        changed meanwhile: a user who consented again keeps the new consent."""
        missing_scope = exc.missing_scope if isinstance(exc, ScopeMissing) else None
        marked = self._authorization.mark_reauth_required(
            attempt.fence,
            self._now(),
            token_version=attempt.tokens.version,
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
        fresh = self._leases.get(attempt.fence.open_id)
        attempt.superseded += 1
        if (
            fresh is not None
            and fresh.status == ACTIVE
            and fresh.lease_active(self._now())
            and fresh.lease_owner == attempt.fence.owner
            and attempt.superseded <= MAX_SUPERSEDED
        ):
            attempt.adopt(fresh)
            return self._guarded(attempt)
        self._leases.release_after_failure(attempt.fence, code=None, message="", due_at=self._now(), failed=False)
        return self._result(attempt, "interrupted")

    def _release_quietly(self, fence: Fence, failures: int) -> None:
        try:
            due = self._now() + failure_backoff(failures)
            self._leases.release_after_failure(fence, code=None, message="internal error", due_at=due)
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
            passes=calendars.listings,  # each pass lists the calendar list, a resumed one twice
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

    def _loop(self, attempt: _Attempt) -> SyncResult:
        for _ in range(MAX_PASSES):
            listed = self._list_calendars(attempt)
            attempt.calendars_reduced = listed.reduced
            held = self._sync_events(attempt) or listed.held is not None
            user = attempt.user
            if not attempt.subscription_checked:
                attempt.subscription_checked = True
                self._resubscribe(
                    attempt,
                    user.subscribed_at,
                    lambda token: self._feishu.subscribe_calendar_changes(token, deadline=attempt.deadline),
                    lambda now: self._authorization.mark_subscribed(attempt.fence.open_id, now),
                    CALENDAR_SUBSCRIPTION,
                )
            now = self._now()
            due = now + (self._settings.mass_delete_confirm_seconds if held else self._settings.stale_after_seconds)
            if attempt.events_due_at is not None:
                due = max(now, min(due, attempt.events_due_at))
            fresh = self._leases.release_after_success(
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
                        "passes": calendars.listings,
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
            attempt.refresh(fresh)
        # Pings keep coming: stop here and leave the user due so the resync comes back soon.
        self._leases.release_after_failure(attempt.fence, code=None, message="", due_at=self._now(), failed=False)
        return self._result(attempt, "synced")

    # -------------------------------------------------------------------------- listings
    def _list_to_date[T: Item](
        self,
        attempt: _Attempt,
        collection: CollectionId,
        *,
        name: str,
        metrics: MetricNames,
        items: MirroredItems[T],
        list_page: Callable[..., Page[T]],
        state: ListingState,
        tally: Tally,
        reload: Callable[[], ListingState | None],
    ) -> ListingOutcome:
        """List a collection to its end: pages from ``list_page`` (a Feishu listing, with the user's token),
        items in ``items``. A listing resumed from a checkpoint began in an earlier invocation, possibly
        before the changes that started this one: it is followed by an incremental pass from the token it
        just committed (``reload`` reads the state again)."""

        def fetch(page_token: str, sync_token: str | None) -> Page[T]:
            return attempt.tokens.call(
                lambda token: list_page(
                    token,
                    deadline=attempt.deadline,
                    page_size=self._settings.page_size,
                    page_token=page_token or None,
                    sync_token=None if page_token else sync_token,
                )
            )

        listed = MirrorCollection(
            collection, attempt.fence, name=name, metrics=metrics, fetch=fetch, items=items, listings=self._listings
        )
        while True:
            outcome = self._engine.sync_collection(listed, state, tally)
            if state.checkpoint is None or outcome.held:
                return outcome
            count(metrics.resumed_then_incremental)
            fresh = reload()
            if fresh is None:
                return outcome
            state = fresh

    def _list_calendars(self, attempt: _Attempt) -> ListingOutcome:
        """The user's calendar list (its state on the user's record, read again after a resumed listing)."""
        open_id = attempt.fence.open_id

        def reload() -> ListingState | None:
            fresh = self._leases.get(open_id)
            if fresh is None:
                return None
            attempt.refresh(fresh)
            return fresh.calendar_list

        return self._list_to_date(
            attempt,
            CollectionId(open_id),
            name="calendars",
            metrics=CALENDAR_METRICS,
            items=self._calendars,
            list_page=self._feishu.list_calendars,
            state=attempt.user.calendar_list,
            tally=attempt.calendars,
            reload=reload,
        )

    def _list_events(
        self,
        events: MirroredItems[Event],
        attempt: _Attempt,
        calendar_id: str,
        listing: EventListing | None,
        tally: Tally,
    ) -> ListingOutcome:
        """One calendar's event listing (its held sweep, if deletions were held back, and its counts)."""
        open_id = attempt.fence.open_id

        def reload() -> ListingState | None:
            fresh = self._listings.event_listing(open_id, calendar_id)
            return fresh.state if fresh else None

        if listing is None:
            self._listings.begin_events(attempt.fence, self._now(), calendar_id)
        return self._list_to_date(
            attempt,
            CollectionId(open_id, calendar_id),
            name="events",
            metrics=EVENT_METRICS,
            items=events,
            list_page=partial(self._feishu.list_events, calendar_id=calendar_id),
            state=listing.state if listing else ListingState(),
            tally=tally,
            reload=reload,
        )

    def _sync_events(self, attempt: _Attempt) -> bool:
        """List the events of each calendar that needs it; returns True when deletions were held back."""
        events = self._events
        if events is None:
            return False
        user, open_id, now = attempt.user, attempt.fence.open_id, self._now()
        calendars = self._calendars.load_all(CollectionId(open_id))
        readable = {cid for cid, stored in calendars.items() if stored.live and has_readable_events(stored.item)}
        listings = self._listings.event_listings(open_id)
        for calendar_id in sorted(listings.keys() - readable):
            self._retire_events(events, attempt, calendar_id)
        attempt.held_events = {
            cid: listing.state.held_sweep.count
            for cid, listing in listings.items()
            if cid in readable and listing.state.held_sweep
        }
        attempt.events_reduced = {cid: listing.state.reduced for cid, listing in listings.items() if cid in readable}
        # A push for a calendar whose events are not mirrored (gone, unreadable) has nothing to list.
        attempt.handled_calendars |= user.dirty_calendars - readable
        due = self._due_calendars(attempt, readable, listings, now)
        if due:
            attempt.tokens.access_token()  # refreshed once here, before the listings run side by side
        # Each listing counts into its own tally; all are added up even when one raises.
        tallies = {calendar_id: Tally() for calendar_id, _ in due}
        try:
            listed = self._concurrency.map(
                lambda pair: self._list_calendar_events(events, attempt, *pair, tallies[pair[0]]),
                due,
                self._event_workers,
            )
        finally:
            for tally in tallies.values():
                attempt.events.add(tally)
        held = False
        failure: FeishuError | None = None
        for calendar_id, outcome, error in listed:
            if error is not None:
                failure = failure or error
            if outcome is None:
                continue
            attempt.held_events.pop(calendar_id, None)
            attempt.events_reduced[calendar_id] = outcome.reduced
            if outcome.held is not None:
                held = True
                attempt.held_events[calendar_id] = outcome.held.count
            attempt.handled_calendars.add(calendar_id)
        if failure is not None:
            raise failure
        return held

    def _due_calendars(
        self, attempt: _Attempt, readable: set[str], listings: dict[str, EventListing], now: int
    ) -> list[tuple[str, EventListing | None]]:
        """The readable calendars whose events are listed now; for the others, when they will be due."""
        due = []
        for calendar_id in sorted(readable):
            listing = listings.get(calendar_id)
            if self._events_due(listing, calendar_id, attempt.user, attempt, now):
                due.append((calendar_id, listing))
            elif listing is not None and listing.synced_at is not None:
                # Come back when this calendar's events are due, even if the user is not yet.
                next_due = listing.synced_at + self._settings.stale_after_seconds
                attempt.events_due_at = min(attempt.events_due_at or next_due, next_due)
        return due

    def _list_calendar_events(
        self,
        events: MirroredItems[Event],
        attempt: _Attempt,
        calendar_id: str,
        listing: EventListing | None,
        tally: Tally,
    ) -> tuple[str, ListingOutcome | None, FeishuError | None]:
        """One calendar's events and its subscription, beside the others (``_sync_events``), counted in
        ``tally``: the outcome (None when skipped or failed) and the error to fail the sync with after the
        others."""
        try:
            outcome = self._list_events(events, attempt, calendar_id, listing, tally)
        except (ReauthorizationRequired, AccessTokenRejected, FeishuUnavailable):
            raise  # the user's authorisation, or Feishu itself: no other calendar would fare better
        except FeishuError as exc:
            if exc.code in EVENTS_UNAVAILABLE_CODES:
                # The calendar list and this calendar disagree for a moment (just deleted, access just
                # revoked): skip it; the next calendar listing settles which one is right.
                count("EventListingsUnavailable")
                logger.info("events_unavailable", extra={"calendar_id": calendar_id, "code": exc.code})
                return calendar_id, None, None
            # One calendar Feishu will not list must not starve the others: list them, then fail the
            # sync with this calendar's error (recorded on the user, retried with a backoff).
            count("EventListingFailures")
            logger.warning(
                "event_listing_failed", extra={"calendar_id": calendar_id, "code": exc.code, "log_id": exc.log_id}
            )
            error = FeishuError(
                exc.code, f"events of {calendar_id}: {exc.message}", http_status=exc.http_status, log_id=exc.log_id
            )
            return calendar_id, None, error
        self._resubscribe(
            attempt,
            listing.subscribed_at if listing else None,
            partial(self._feishu.subscribe_calendar_events, calendar_id=calendar_id, deadline=attempt.deadline),
            partial(self._listings.mark_events_subscribed, attempt.fence, calendar_id=calendar_id),
            EVENT_SUBSCRIPTION,
            calendar_id=calendar_id,
        )
        return calendar_id, outcome, None

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

    def _retire_events(self, events: MirroredItems[Event], attempt: _Attempt, calendar_id: str) -> None:
        """A calendar left the list or became unreadable: tombstone its events and forget its listing."""
        collection = CollectionId(attempt.fence.open_id, calendar_id)
        live = tuple(s.item for s in events.load_all(collection).values() if s.live)
        if live:
            events.apply(attempt.fence, self._now(), collection, deletions=live)
            attempt.events.deleted += len(live)
            count(EVENT_METRICS.deleted, len(live))
        self._listings.retire_events(attempt.fence, self._now(), calendar_id)
        count("EventListingsRetired")
        logger.info("events_retired", extra={"calendar_id": calendar_id, "deleted": len(live)})

    # -------------------------------------------------------------------------- subscriptions
    def _resubscribe(
        self,
        attempt: _Attempt,
        subscribed_at: int | None,
        subscribe: Callable[[str], None],
        record: Callable[[int], None],
        metrics: SubscriptionMetrics,
        **log: Any,
    ) -> None:
        """Re-assert a change subscription (``subscribe`` with the user's access token) when it was never
        made or is older than ``subscription_refresh_seconds``, then ``record`` it. Never fatal, except
        when the user's authorisation itself fails."""
        now = self._now()
        if subscribed_at and now - subscribed_at < self._settings.subscription_refresh_seconds:
            return
        try:
            attempt.tokens.call(subscribe)
        except (ReauthorizationRequired, RefreshOutcomeUnknown):
            raise
        except (FeishuError, DeadlineExceeded) as exc:
            count(metrics.failed)
            logger.warning(metrics.failure_log, extra={**log, "code": getattr(exc, "code", None)})
            return
        record(now)
        count(metrics.asserted)
