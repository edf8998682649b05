"""Turning "this user's calendars changed" into at most one pending sync per user.

A ping marks the user dirty (``dirty_seq`` + 1) and due. If a sync holds the user's lease, that sync
sees the new ``dirty_seq`` when it tries to release and loops once more; if a sync was already
started and has not begun yet, it will read the new state anyway. Only otherwise is a new sync
invoked, after a conditional claim, so bursts of pings cost one invocation.

Each dispatch logs one ``pings_dispatched`` line naming the users by outcome (with the push's
``delivery_id``, Feishu's ``header.event_id``, when there is one), so an operator can go from a push to
the users it touched and on to their syncs' logs (keyed by ``open_id``), also when the push coalesced
into a sync already running.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from feishu_mirror.invoker import SyncInvoker
from feishu_mirror.models import UserRecord
from feishu_mirror.observability import count, logger

CLAIM_SECONDS = 120
# Feishu names at most 1000 users per event (``callback.MAX_USERS_PER_EVENT``); the log line is bounded
# by this anyway, whoever the caller (about 40 kB of open ids, far below a log event's 256 kB).
MAX_LOGGED_OPEN_IDS = 1000


class PingTargets(Protocol):
    """What a ping writes on the user (``dynamodb.user_schedule.SyncSchedule``)."""

    def ping_and_claim(self, open_id: str, now: int, until: int, calendar_ids: frozenset[str] = frozenset()) -> bool:
        """Mark dirty and claim the invocation in one write; False when a sync runs or is pending, or the
        user is unknown or inactive."""
        ...

    def mark_dirty(self, open_id: str, now: int, calendar_ids: frozenset[str] = frozenset()) -> UserRecord | None:
        """Bump ``dirty_seq`` and make the user due; the record after it, None for unknown/inactive users."""
        ...

    def claim_invocation(self, open_id: str, now: int, until: int) -> bool:
        """Claim the right to start a sync: no sync running and none already started."""
        ...


@dataclass(slots=True)
class PingOutcome:
    """Per user, what a ping led to."""

    started: list[str] = field(default_factory=list)
    coalesced: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    invoke_failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Counts only (open ids stay out of responses)."""
        return {
            "started": len(self.started),
            "coalesced": len(self.coalesced),
            "ignored": len(self.ignored),
            "invoke_failed": len(self.invoke_failed),
        }

    def open_ids(self, limit: int = MAX_LOGGED_OPEN_IDS) -> dict[str, Any]:
        """For the log line: the open ids per outcome, at most ``limit`` in all (the rest are counted)."""
        out: dict[str, Any] = {}
        left = limit
        for name in ("started", "coalesced", "ignored", "invoke_failed"):
            ids: list[str] = getattr(self, name)
            out[f"{name}_open_ids"] = ids[: max(left, 0)]
            left -= len(ids)
        if left < 0:
            out["open_ids_not_logged"] = -left
        return out


class PingDispatcher:
    """Marks users dirty and starts their syncs, coalescing with running or pending ones."""

    def __init__(
        self,
        users: PingTargets,
        invoker: SyncInvoker,
        *,
        claim_seconds: int = CLAIM_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._invoker = invoker
        self._claim_seconds = claim_seconds
        self._clock = clock

    def dispatch(
        self, open_ids: Iterable[str], reason: str, *, calendar_id: str = "", delivery_id: str = ""
    ) -> PingOutcome:
        """Handle one ping for each user. Unknown or inactive users are ignored.

        ``calendar_id`` names a calendar whose events changed: its events are listed by the sync.
        ``delivery_id`` (the push's ``header.event_id``) travels with a started sync, for its logs, and is
        logged with every user's outcome (``pings_dispatched``), for the users whose push coalesced.

        A failed invoke is logged and counted, not raised: the user stays due, so the scheduled
        resync starts the sync within one period.
        """
        outcome = PingOutcome()
        dirty_calendars = frozenset({calendar_id}) if calendar_id else frozenset()
        for open_id in open_ids:
            now = int(self._clock())
            until = now + self._claim_seconds
            if not self._users.ping_and_claim(open_id, now, until, dirty_calendars):
                # A sync runs or is pending (or the user is unknown): mark dirty so it loops, then
                # claim anyway in case it released its lease between our two writes.
                record = self._users.mark_dirty(open_id, now, dirty_calendars)
                if record is None:
                    outcome.ignored.append(open_id)
                    continue
                if record.lease_active(now) or record.pending_invoke_until > now:
                    outcome.coalesced.append(open_id)
                    continue
                if not self._users.claim_invocation(open_id, now, until):
                    outcome.coalesced.append(open_id)
                    continue
            try:
                self._invoker.invoke(open_id, reason, delivery_id=delivery_id)
            except Exception as exc:
                logger.warning("sync_invoke_failed", extra={"open_id": open_id, "error": type(exc).__name__})
                outcome.invoke_failed.append(open_id)
                continue
            outcome.started.append(open_id)
        trail: dict[str, Any] = {"reason": reason, **outcome.open_ids()}
        if delivery_id:
            trail["delivery_id"] = delivery_id
        if calendar_id:
            trail["calendar_id"] = calendar_id
        logger.info("pings_dispatched", extra=trail)
        count("SyncsStarted", len(outcome.started))
        count("PingsCoalesced", len(outcome.coalesced))
        count("PingsIgnored", len(outcome.ignored))
        if outcome.invoke_failed:
            count("SyncInvokeFailures", len(outcome.invoke_failed))
        return outcome
