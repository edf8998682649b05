"""The sync algorithm: one user's calendar list from Feishu into the calendars table.

Under the user's lease: pick the listing (resume a checkpoint, incremental with the stored
``sync_token``, or full), fetch page by page, write only what changed, checkpoint after each page
that has a successor, and commit the new ``sync_token`` only after the last page. 190008 restarts as
a full listing whose end sweeps away calendars it no longer contains — unless that looks like a mass
deletion, which is held until a later full listing confirms it. Pings that arrive meanwhile make the
sync loop again before it releases the lease. The planning functions are pure and unit-tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from feishu_mirror.config import Settings
from feishu_mirror.errors import (
    AccessTokenRejected,
    DeadlineExceeded,
    FeishuError,
    LeaseLost,
    ReauthorizationRequired,
    SyncTokenExpired,
)
from feishu_mirror.feishu import FeishuClient
from feishu_mirror.models import (
    Calendar,
    CalendarPage,
    Checkpoint,
    HeldSweep,
    StoredCalendar,
    SyncKind,
    SyncOutcome,
    SyncResult,
    UserRecord,
)
from feishu_mirror.observability import count, logger
from feishu_mirror.store import ACTIVE, CalendarStore, Fence, UnknownUser, UserStore

MAX_PASSES = 5
REFRESH_MARGIN_SECONDS = 300
MASS_DELETE_MIN = 5
MASS_DELETE_FRACTION = 0.5
MAX_FAILURE_BACKOFF = 6 * 3600


# ------------------------------------------------------------------------------ pure planning
@dataclass(frozen=True, slots=True)
class PagePlan:
    """What one page changes in the mirror."""

    upserts: tuple[Calendar, ...]
    deletions: tuple[Calendar, ...]
    live_delta: int
    listed_ids: frozenset[str]


def plan_page(entries: Iterable[tuple[Calendar, bool]], current: Mapping[str, StoredCalendar]) -> PagePlan:
    """Compare a page with what the mirror holds: new or changed calendars, and deletions.

    An entry identical to the stored live item writes nothing. ``is_deleted`` entries tombstone a
    live item (keeping the latest known fields) and are ignored when nothing live is stored.
    """
    view = dict(current)
    changes: dict[str, tuple[Calendar, bool]] = {}
    live_delta = 0
    listed: set[str] = set()
    for calendar, is_deleted in entries:
        cid = calendar.calendar_id
        stored = view.get(cid)
        was_live = stored is not None and stored.live
        if is_deleted:
            listed.discard(cid)
            if was_live:
                assert stored is not None
                tomb = calendar if calendar.fields else stored.calendar
                changes[cid] = (tomb, True)
                view[cid] = StoredCalendar(tomb, deleted_at=0)
                live_delta -= 1
            continue
        listed.add(cid)
        if was_live and stored is not None and dict(stored.calendar.fields) == dict(calendar.fields):
            continue
        changes[cid] = (calendar, False)
        view[cid] = StoredCalendar(calendar)
        if not was_live:
            live_delta += 1
    return PagePlan(
        upserts=tuple(c for c, deleted in changes.values() if not deleted),
        deletions=tuple(c for c, deleted in changes.values() if deleted),
        live_delta=live_delta,
        listed_ids=frozenset(listed),
    )


def is_mass_deletion(*, live_before: int, missing: int, listed: int) -> bool:
    """A full listing that empties or drastically shrinks a user's mirror is not trusted at once."""
    if missing == 0 or live_before == 0:
        return False
    return listed == 0 or (missing >= MASS_DELETE_MIN and missing > MASS_DELETE_FRACTION * live_before)


def failure_backoff(consecutive_failures: int) -> int:
    """Seconds until a failed user is tried again: 1 min doubling, capped at 6 h."""
    return int(min(MAX_FAILURE_BACKOFF, 60 * 2 ** min(consecutive_failures, 20)))


# ------------------------------------------------------------------------------ the engine
@dataclass(slots=True)
class _Tokens:
    access_token: str = field(repr=False)
    access_expires_at: int
    refresh_token: str | None = field(repr=False)
    refresh_expires_at: int | None


@dataclass(slots=True)
class _Run:
    """Mutable bookkeeping of one invocation."""

    fence: Fence
    deadline: float
    tokens: _Tokens
    kind: str = ""
    passes: int = 0
    pages: int = 0
    upserted: int = 0
    deleted: int = 0
    held: int = 0
    subscription_checked: bool = False


class CalendarSync:
    """Runs the sync for one user at a time (see the module docstring)."""

    def __init__(
        self,
        *,
        users: UserStore,
        calendars: CalendarStore,
        feishu: FeishuClient,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._calendars = calendars
        self._feishu = feishu
        self._settings = settings
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock())

    def run(self, open_id: str, *, owner: str, deadline: float, lease_seconds: int) -> SyncResult:
        """Sync one user. Expected failures are recorded on the user and returned, not raised.

        ``owner`` identifies this invocation (the Lambda request id); ``deadline`` is a
        ``time.monotonic()`` value; the lease expires after ``lease_seconds`` even if we die.
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
        run = _Run(
            fence,
            deadline,
            _Tokens(user.access_token, user.access_expires_at, user.refresh_token, user.refresh_expires_at),
        )
        return self._guarded(user, run)

    def _guarded(self, user: UserRecord, run: _Run) -> SyncResult:
        """Run the passes and map each expected failure to a recorded outcome."""
        fence = run.fence
        try:
            return self._loop(user, run)
        except ReauthorizationRequired as exc:
            count("UsersNeedingReauth")
            logger.warning("reauth_required", extra={"code": exc.code, "log_id": exc.log_id})
            self._users.mark_reauth_required(fence, self._now(), code=exc.code, message=exc.message)
            return self._result(run, "reauth_required", exc.code)
        except DeadlineExceeded:
            count("SyncsInterrupted")
            logger.warning("sync_interrupted", extra={"pages": run.pages})
            self._users.release_after_failure(fence, code=None, message="", due_at=self._now(), failed=False)
            return self._result(run, "interrupted")
        except LeaseLost:
            count("SyncLeaseLost")
            logger.error("sync_lease_lost")
            return self._result(run, "failed")
        except FeishuError as exc:
            count("SyncFailures")
            logger.warning("sync_failed", extra={"code": exc.code, "error": exc.message, "log_id": exc.log_id})
            due = self._now() + failure_backoff(user.consecutive_failures)
            self._users.release_after_failure(fence, code=exc.code, message=exc.message, due_at=due)
            return self._result(run, "failed", exc.code)
        except Exception:
            # A bug or an AWS outage: release so a retry can start at once, then let Lambda retry.
            self._release_quietly(fence, user.consecutive_failures)
            raise

    def _release_quietly(self, fence: Fence, failures: int) -> None:
        try:
            due = self._now() + failure_backoff(failures)
            self._users.release_after_failure(fence, code=None, message="internal error", due_at=due)
        except Exception:
            logger.exception("lease_release_failed")

    def _result(self, run: _Run, outcome: SyncOutcome, code: int | None = None) -> SyncResult:
        return SyncResult(
            run.fence.open_id,
            outcome,
            kind=run.kind,
            passes=run.passes,
            pages=run.pages,
            upserted=run.upserted,
            deleted=run.deleted,
            held_deletions=run.held,
            error_code=code,
        )

    def _loop(self, user: UserRecord, run: _Run) -> SyncResult:
        for _ in range(MAX_PASSES):
            run.passes += 1
            held = self._one_pass(user, run)
            if user.checkpoint is not None and not held:
                # The resumed listing began in an earlier invocation, possibly before the changes that
                # started this one: follow it with an incremental pass from the token it just committed.
                count("SyncResumedThenIncremental")
                fresh_user = self._users.get(run.fence.open_id)
                if fresh_user is not None:
                    user = fresh_user
                    continue
            self._assert_subscription(user, run)
            now = self._now()
            due = now + (self._settings.mass_delete_confirm_seconds if held else self._settings.stale_after_seconds)
            fresh = self._users.release_after_success(run.fence, now, seen_dirty_seq=user.dirty_seq, due_at=due)
            if fresh is None:
                count("SyncsCompleted")
                logger.info(
                    "sync_completed",
                    extra={
                        "kind": run.kind,
                        "passes": run.passes,
                        "pages": run.pages,
                        "upserted": run.upserted,
                        "deleted": run.deleted,
                    },
                )
                return self._result(run, "synced")
            count("SyncRepeatedForPing")
            user = fresh
        # Pings keep coming: stop here and leave the user due so the resync comes back soon.
        self._users.release_after_failure(run.fence, code=None, message="", due_at=self._now(), failed=False)
        return self._result(run, "synced")

    # -------------------------------------------------------------------------- one listing
    def _one_pass(self, user: UserRecord, run: _Run) -> bool:
        """Run one listing to its end and commit it; returns True when deletions were held back."""
        open_id = run.fence.open_id
        now = self._now()
        kind, page_token, seen, started_at = self._choose_listing(user, now)
        if user.checkpoint:
            run.kind = run.kind or "resume"
        run.kind = run.kind or kind
        count("SyncsResumed" if user.checkpoint else ("SyncsFull" if kind == "full" else "SyncsIncremental"))
        reset = False
        existing = self._calendars.load_all(open_id) if kind == "full" else {}
        live_before = sum(1 for c in existing.values() if c.live)
        mirrored = user.calendars_mirrored
        while True:
            try:
                page = self._list(
                    run, page_token=page_token, sync_token=user.sync_token if kind == "incremental" else None
                )
            except SyncTokenExpired:
                if reset:
                    raise
                count("SyncTokenResets")
                logger.info("sync_token_expired", extra={"kind": kind})
                reset, kind, page_token, seen, started_at = True, "full", "", set(), self._now()
                run.kind = "full"
                self._users.discard_sync_state(run.fence, self._now())
                existing = self._calendars.load_all(open_id)
                live_before = sum(1 for c in existing.values() if c.live)
                continue
            run.pages += 1
            count("PagesFetched")
            current = (
                existing
                if kind == "full"
                else self._calendars.load_some(open_id, (c.calendar_id for c, _ in page.entries))
            )
            plan = plan_page(page.entries, current)
            self._write(run, plan.upserts, plan.deletions)
            mirrored += plan.live_delta
            if kind == "full":
                seen |= plan.listed_ids
                seen -= {c.calendar_id for c in plan.deletions}
                self._remember(existing, plan)
            if page.has_more:
                page_token = page.page_token
                self._users.save_checkpoint(
                    run.fence,
                    self._now(),
                    Checkpoint(kind, page_token, frozenset(seen), started_at),
                )
                continue
            break
        held: HeldSweep | None = None
        if kind == "full":
            held, mirrored = self._sweep(user, run, existing, seen, live_before)
        sync_token = page.sync_token or (user.sync_token if kind == "incremental" else None)
        self._users.commit_listing(
            run.fence,
            self._now(),
            sync_token=None if held else sync_token,
            calendars_mirrored=max(0, mirrored),
            kind=kind,
            held_sweep=held,
            reset=reset,
        )
        return held is not None

    @staticmethod
    def _choose_listing(user: UserRecord, now: int) -> tuple[SyncKind, str, set[str], int]:
        """Resume a checkpoint, else incremental with the sync_token, else a full listing."""
        checkpoint = user.checkpoint
        if checkpoint:
            return checkpoint.kind, checkpoint.page_token, set(checkpoint.seen_ids), checkpoint.started_at
        if user.sync_token:
            return "incremental", "", set(), now
        # First sync, after 190008, or while deletions are held (those listings keep no sync_token).
        return "full", "", set(), now

    def _sweep(
        self, user: UserRecord, run: _Run, existing: dict[str, StoredCalendar], seen: set[str], live_before: int
    ) -> tuple[HeldSweep | None, int]:
        """End of a full listing: tombstone live calendars it did not contain, unless suspicious.

        Returns the held sweep (if any) and the number of live calendars the mirror now holds.
        """
        now = self._now()
        live = [c.calendar for c in existing.values() if c.live]
        missing = [c for c in live if c.calendar_id not in seen]
        listed = len(live) - len(missing)
        if is_mass_deletion(live_before=max(live_before, len(missing)), missing=len(missing), listed=listed):
            held = user.held_sweep
            confirmed = held is not None and now - held.first_seen_at >= self._settings.mass_delete_confirm_seconds
            if not confirmed:
                count("MassDeletionsHeld")
                logger.warning("mass_deletion_held", extra={"missing": len(missing), "live": len(live)})
                run.held = len(missing)
                return HeldSweep(len(missing), held.first_seen_at if held else now), len(live)
            count("MassDeletionsConfirmed")
            logger.warning("mass_deletion_confirmed", extra={"missing": len(missing), "live": len(live)})
        if missing:
            self._write(run, (), tuple(missing))
        return None, listed

    def _write(self, run: _Run, upserts: tuple[Calendar, ...], deletions: tuple[Calendar, ...]) -> None:
        if not upserts and not deletions:
            return
        self._calendars.apply(run.fence, self._now(), upserts=upserts, deletions=deletions)
        run.upserted += len(upserts)
        run.deleted += len(deletions)
        count("CalendarsUpserted", len(upserts))
        count("CalendarsDeleted", len(deletions))

    @staticmethod
    def _remember(existing: dict[str, StoredCalendar], plan: PagePlan) -> None:
        for calendar in plan.upserts:
            existing[calendar.calendar_id] = StoredCalendar(calendar)
        for calendar in plan.deletions:
            existing[calendar.calendar_id] = StoredCalendar(calendar, deleted_at=0)

    # -------------------------------------------------------------------------- Feishu calls
    def _list(self, run: _Run, *, page_token: str, sync_token: str | None) -> CalendarPage:
        """One listing call, refreshing the access token once if Feishu says it expired."""

        def call(token: str) -> CalendarPage:
            return self._feishu.list_calendars(
                token,
                deadline=run.deadline,
                page_size=self._settings.page_size,
                page_token=page_token or None,
                sync_token=None if page_token else sync_token,
            )

        try:
            return call(self._access_token(run))
        except AccessTokenRejected:
            logger.info("access_token_rejected")
            return call(self._refresh(run))

    def _access_token(self, run: _Run) -> str:
        if run.tokens.access_token and run.tokens.access_expires_at - self._now() > REFRESH_MARGIN_SECONDS:
            return run.tokens.access_token
        return self._refresh(run)

    def _refresh(self, run: _Run) -> str:
        """Rotate the token pair (we hold the lease, so no one else can) and persist it at once."""
        tokens = run.tokens
        if not tokens.refresh_token or (tokens.refresh_expires_at and tokens.refresh_expires_at <= self._now()):
            raise ReauthorizationRequired(20037, "refresh token missing or expired")
        grant = self._feishu.refresh_access_token(tokens.refresh_token, deadline=run.deadline)
        count("TokenRefreshes")
        self._users.save_tokens(run.fence, self._now(), grant)
        run.tokens = _Tokens(grant.access_token, grant.access_expires_at, grant.refresh_token, grant.refresh_expires_at)
        return grant.access_token

    def _assert_subscription(self, user: UserRecord, run: _Run) -> None:
        """Re-subscribe to calendar changes when it was never done or is due again; never fatal."""
        if run.subscription_checked:
            return
        run.subscription_checked = True
        now = self._now()
        if user.subscribed_at and now - user.subscribed_at < self._settings.subscription_refresh_seconds:
            return
        try:
            self._feishu.subscribe_calendar_changes(self._access_token(run), deadline=run.deadline)
        except ReauthorizationRequired:
            raise
        except (FeishuError, DeadlineExceeded) as exc:
            count("SubscriptionFailures")
            logger.warning("subscription_failed", extra={"code": getattr(exc, "code", None)})
            return
        self._users.mark_subscribed(run.fence.open_id, now)
        count("SubscriptionsAsserted")
