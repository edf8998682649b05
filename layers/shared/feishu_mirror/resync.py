"""The scheduled safety net: start syncs for users a push may have missed.

Due users (dirty, failed and past their backoff, never synced, stale, or an interrupted listing)
come from the sparse ``due-index`` — a query per shard, never a table scan — oldest first and at
most ``max_users`` per run. Each is claimed conditionally (skipped if a sync runs or was just
started) and its sync invoked asynchronously; the sync function's reserved concurrency and the
Feishu rate gate bound how fast they run. The sync re-asserts each user's event subscription.
Each run also reports how many users are waiting to authorise again (``UsersAwaitingReauth``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from feishu_mirror.invoker import SyncInvoker
from feishu_mirror.observability import count, logger

# A run starts at most ``max_users`` (``RESYNC_MAX_USERS_PER_RUN``, 200: about a minute of Feishu's event-
# listing budget of 1,000/min at a typical user's 5-8 calendars) every minute. In a forced sweep of 10,000
# users the runs start everyone within ~50 minutes and the syncs drain at Feishu's floor (~80 minutes);
# the claim covers most waits in Lambda's queue. Should one wait longer (throttled invocations back off)
# and its claim lapse (a later run then starts the user again), the sync it starts finds the user synced
# since its ``claimed_at`` and does nothing.
CLAIM_SECONDS = 3600
INVOKE_WORKERS = 8


class DueUsers(Protocol):
    """The users the resync starts (``dynamodb.user_schedule.SyncSchedule``)."""

    def due_users(self, now: int, limit: int) -> list[str]:
        """Users whose ``due_at`` has passed, oldest first, at most ``limit``."""
        ...

    def claim_invocation(self, open_id: str, now: int, until: int) -> bool:
        """Claim the right to start a sync: no sync running and none already started."""
        ...

    def count_awaiting_reauth(self) -> int:
        """How many users must authorise again."""
        ...


@dataclass(frozen=True, slots=True)
class ResyncOutcome:
    """What one scheduled run did."""

    due: int
    started: int
    skipped: int
    invoke_failed: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form, returned by the resync function."""
        return {"due": self.due, "started": self.started, "skipped": self.skipped, "invoke_failed": self.invoke_failed}


class Resync:
    """Finds due users and starts their syncs, with bounded fan-out."""

    def __init__(
        self,
        users: DueUsers,
        invoker: SyncInvoker,
        *,
        max_users: int,
        claim_seconds: int = CLAIM_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._invoker = invoker
        self._max_users = max_users
        self._claim_seconds = claim_seconds
        self._clock = clock

    def sweep(self) -> ResyncOutcome:
        """One scheduled pass."""
        now = int(self._clock())
        due = self._users.due_users(now, self._max_users)
        with ThreadPoolExecutor(max_workers=INVOKE_WORKERS) as pool:
            results = list(pool.map(lambda open_id: self._start(open_id, now), due))
        outcome = ResyncOutcome(
            due=len(due),
            started=results.count("started"),
            skipped=results.count("skipped"),
            invoke_failed=results.count("failed"),
        )
        count("ResyncUsersDue", outcome.due)
        count("ResyncSyncsStarted", outcome.started)
        logger.info("resync_finished", extra=outcome.as_dict())
        self._report_awaiting_reauth()
        return outcome

    def _report_awaiting_reauth(self) -> None:
        """The gauge behind the re-authorisation alarm; a failure to count never fails the run."""
        try:
            awaiting = self._users.count_awaiting_reauth()
        except Exception as exc:
            logger.warning("awaiting_reauth_uncounted", extra={"error": type(exc).__name__})
            return
        count("UsersAwaitingReauth", awaiting)

    def _start(self, open_id: str, now: int) -> str:
        if not self._users.claim_invocation(open_id, now, now + self._claim_seconds):
            return "skipped"
        try:
            self._invoker.invoke(open_id, "resync", claimed_at=now)
        except Exception as exc:
            logger.warning("sync_invoke_failed", extra={"open_id": open_id, "error": type(exc).__name__})
            return "failed"
        return "started"
