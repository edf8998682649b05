"""What 1,000 users cost a month, from the fleet's measured counts and AWS's public prices (``bench.aws_costs``),
against a design that polls every user's calendars and events every 5 minutes.

Measured (``bench.fleet``): Lambda seconds billed per push sync and per resync (virtual time at Feishu's
answer times), Feishu calls per resync, cold starts per invocation; DynamoDB write and read units per
push sync and per resync with nothing changed (``bench.fleet_crosscheck``, on DynamoDB Local); stored
items per user (``bench.population``). Assumed (``ACTIVITY``, written in the README): how often users'
calendars change and what the fixed parts of the deployment are.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.aws_costs import Usage, total

DAYS = 30.4
GB = 1024**3
MEMORY_GB = 0.5  # the template's MemorySize, 512 MB, every function
ACTIVITY = {
    "pushes_per_user_day": 20.0,  # event changes Feishu pushes (each its own delivery, each a sync here)
    "resyncs_per_user_day": 4.0,  # a user's listings go stale after 6 h
    "callback_seconds": 0.03,  # billed per delivery (warm; measured by the callback benchmark)
    "log_bytes_per_call": 400.0,  # a Feishu call's INFO log line
    "log_bytes_per_invocation": 1500.0,  # start, end, report lines and the sync's summary
    "item_bytes": 1200.0,  # an event as stored, with its agenda index entry
    "fleet_users": 10_000.0,  # the fixed parts (secret, key, alarms, dashboard, metrics) shared by this many
    "alarms": 12.0,
    "custom_metrics": 60.0,
    "polling_seconds": 300.0,
}


@dataclass(frozen=True, slots=True)
class Measured:
    """What the fleet measured, per sync."""

    push: PerSync  # a sync a push started (its changes listed)
    resync: PerSync  # the 6-hourly resync: token refresh, every listing again, subscription renewals
    poll: PerSync  # a relisting with nothing changed (the calendar list and every calendar's events)
    changed_per_push_sync: float
    cold_start_fraction: float
    events_per_user: float


@dataclass(frozen=True, slots=True)
class PerSync:
    """One kind of sync invocation: billed seconds, Feishu calls, DynamoDB units."""

    seconds: float
    calls: float
    wcu: float
    rcu: float


def _syncs(count: float, sync: PerSync, cold_start_fraction: float) -> Usage:
    """``count`` sync invocations of one kind."""
    a = ACTIVITY
    return Usage(
        lambda_gb_seconds=count * sync.seconds * MEMORY_GB,
        lambda_requests=count,
        dynamodb_write_units=count * sync.wcu,
        dynamodb_read_units=count * sync.rcu,
        secrets_manager_calls=count * cold_start_fraction,
        kms_requests=count,  # the user's tokens are opened once per sync
        log_gb=count * (a["log_bytes_per_invocation"] + sync.calls * a["log_bytes_per_call"]) / GB,
    )


def _fixed(users: float) -> Usage:
    """The deployment's fixed parts, the share of ``users`` of a fleet of ``fleet_users``."""
    a = ACTIVITY
    share = users / a["fleet_users"]
    return Usage(
        secrets=share,
        kms_keys=share,
        alarms=a["alarms"] * share,
        dashboards=share,
        custom_metrics=a["custom_metrics"] * share,
        scheduler_invocations=DAYS * 96 * share,
        lambda_requests=DAYS * 96 * share,
    )


def ours(m: Measured, users: float = 1000.0) -> float:
    """Dollars a month for ``users`` users with pushes and the 6-hourly resync."""
    a = ACTIVITY
    pushes = users * a["pushes_per_user_day"] * DAYS
    resyncs = users * a["resyncs_per_user_day"] * DAYS
    callbacks = Usage(
        lambda_gb_seconds=pushes * a["callback_seconds"] * MEMORY_GB,
        lambda_requests=pushes,
        http_api_requests=pushes,
        dynamodb_write_units=pushes * 2,  # the delivery's idempotency record and the user's ping
        log_gb=pushes * a["log_bytes_per_invocation"] / GB,
    )
    changes = pushes * m.changed_per_push_sync
    usage = (
        callbacks
        + _syncs(pushes, m.push, m.cold_start_fraction)
        + _syncs(resyncs, m.resync, m.cold_start_fraction)
        + Usage(
            eventbridge_events=changes,
            dynamodb_gb=users * m.events_per_user * a["item_bytes"] / GB,
        )
        + _fixed(users)
    )
    return total(usage)


def polling(m: Measured, users: float = 1000.0) -> float:
    """Dollars a month for ``users`` users when every user's calendars and events are relisted every 5
    minutes instead (no pushes, no callback): each poll a resync with nothing changed, as measured."""
    a = ACTIVITY
    polls = users * DAYS * 86400 / a["polling_seconds"]
    changes = users * a["pushes_per_user_day"] * DAYS * m.changed_per_push_sync
    usage = (
        _syncs(polls, m.poll, m.cold_start_fraction)
        + Usage(eventbridge_events=changes, dynamodb_gb=users * m.events_per_user * a["item_bytes"] / GB)
        + _fixed(users)
    )
    return total(usage)
