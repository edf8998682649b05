"""Per-user health as an operator sees it, and the push → mirror lag metric (``EventToMirrorLag``).

The sync records health on the user's item as it goes; this module turns the allow-listed attributes
that ``dynamodb.user_health.UserHealthReads`` returns (``get_health``, ``list_health``) into a
``UserHealth`` with one derived ``state`` an operator can sort by, and never carries a token.

``record_push_to_mirror_lag`` is called by the sync handler after a sync: when the sync brought
pushes into the mirror, it emits ``EventToMirrorLag`` — the time from the earliest of those pushes
(``pending_ping_at``, kept by every ping until a sync releases the user with nothing left to do,
stored in whole seconds, so the figure can be up to one second high) to the end of the sync. So a
push that coalesced into a running sync, or waited out a failure, is measured from when it came.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aws_lambda_powertools.metrics import MetricUnit

from feishu_mirror.models import REAUTH_REQUIRED, SyncResult
from feishu_mirror.observability import logger, metrics

LAG_METRIC = "EventToMirrorLag"

HealthState = Literal["reauth_required", "syncing", "failing", "held_deletions", "never_synced", "stale", "ok"]
# Worst first: the overview sorts by this order.
STATE_ORDER: tuple[HealthState, ...] = (
    "reauth_required",
    "failing",
    "held_deletions",
    "never_synced",
    "stale",
    "syncing",
    "ok",
)


def _int(value: Any) -> int | None:
    """An attribute as an int (nested map values arrive as Decimal), or None when absent or odd."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class UserHealth:
    """What an operator needs to know about one user; built from an allow-list, so never a token."""

    open_id: str
    name: str
    status: str
    state: HealthState
    calendars_mirrored: int
    full_resync_count: int
    consecutive_failures: int
    subscribed_at: int | None
    last_ping_at: int | None
    pending_ping_at: int | None
    last_attempt_at: int | None
    last_success_at: int | None
    last_sync_kind: str | None
    last_error_code: int | None
    last_error_message: str | None
    reauth_required_at: int | None
    reauth_cause: str | None  # why the user must consent again (``errors.REAUTH_CAUSES``)
    missing_scope: str | None  # for ``scope_missing``: the scope Feishu named (any one of them), or its code
    held_deletions: int
    held_since: int | None
    items_reduced: int  # live calendars and events stored without fields DynamoDB cannot hold (``mirror_reduced``)
    syncing: bool
    resuming_listing: bool
    due_at: int | None
    authorized_at: int | None
    refresh_expires_at: int | None

    @property
    def reauth_required(self) -> bool:
        """True when the user must consent again before anything syncs."""
        return self.status == REAUTH_REQUIRED

    @classmethod
    def from_item(cls, item: Mapping[str, Any], *, now: int, stale_after_seconds: int) -> UserHealth:
        """Build from a users-table item (plain values); attributes outside the allow-list are ignored."""
        held = _map(item.get("held_sweep"))
        checkpoint = _map(item.get("checkpoint"))
        status = str(item.get("status") or "active")
        lease_expires_at = _int(item.get("lease_expires_at")) or 0
        failures = _int(item.get("consecutive_failures")) or 0
        last_success_at = _int(item.get("last_success_at"))
        held_deletions = (_int(held.get("count")) or 0) + (_int(item.get("held_event_deletions")) or 0)
        syncing = lease_expires_at > now
        error = item.get("last_error_message")
        return cls(
            open_id=str(item["open_id"]),
            name=str(item.get("name") or ""),
            status=status,
            state=_state(
                status=status,
                syncing=syncing,
                failures=failures,
                held_deletions=held_deletions,
                last_success_at=last_success_at,
                stale=last_success_at is not None and now - last_success_at > stale_after_seconds,
            ),
            calendars_mirrored=_int(item.get("calendars_mirrored")) or 0,
            full_resync_count=_int(item.get("full_resync_count")) or 0,
            consecutive_failures=failures,
            subscribed_at=_int(item.get("subscribed_at")),
            last_ping_at=_int(item.get("last_ping_at")),
            pending_ping_at=_int(item.get("pending_ping_at")),
            last_attempt_at=_int(item.get("last_attempt_at")),
            last_success_at=last_success_at,
            last_sync_kind=str(item["last_sync_kind"]) if item.get("last_sync_kind") else None,
            last_error_code=_int(item.get("last_error_code")),
            last_error_message=str(error) if error else None,
            reauth_required_at=_int(item.get("reauth_required_at")),
            reauth_cause=str(item["reauth_cause"]) if item.get("reauth_cause") else None,
            missing_scope=str(item["missing_scope"]) if item.get("missing_scope") else None,
            held_deletions=held_deletions,
            held_since=_int(held.get("first_seen_at")),
            items_reduced=_int(item.get("items_reduced")) or 0,
            syncing=syncing,
            resuming_listing=bool(checkpoint.get("kind")),
            due_at=_int(item.get("due_at")),
            authorized_at=_int(item.get("authorized_at")),
            refresh_expires_at=_int(item.get("refresh_expires_at")),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (epoch seconds as numbers), with ``reauth_required`` spelled out."""
        out = {name: getattr(self, name) for name in self.__slots__}
        out["reauth_required"] = self.reauth_required
        return out


def _state(
    *, status: str, syncing: bool, failures: int, held_deletions: int, last_success_at: int | None, stale: bool
) -> HealthState:
    """The one label an operator sorts by, worst condition first."""
    if status == REAUTH_REQUIRED:
        return "reauth_required"
    if failures:
        return "failing"
    if held_deletions:
        return "held_deletions"
    if last_success_at is None:
        return "syncing" if syncing else "never_synced"
    if stale and not syncing:
        return "stale"
    return "syncing" if syncing else "ok"


def record_push_to_mirror_lag(result: SyncResult, *, now: float) -> float | None:
    """Emit ``EventToMirrorLag`` (seconds) for a sync that brought pushes into the mirror; returns it.

    Returns None (and emits nothing) for a sync that had no push to bring in or did not finish.
    """
    if result.outcome != "synced" or result.pushed_at is None:
        return None
    lag = max(0.0, now - result.pushed_at)
    metrics.add_metric(name=LAG_METRIC, unit=MetricUnit.Seconds, value=lag)
    logger.info("event_to_mirror_lag", extra={"lag_seconds": round(lag, 3)})
    return lag
