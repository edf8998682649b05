"""Sync function: syncs one user's calendar list, invoked asynchronously with ``{"open_id": ...}``.

Expected failures (Feishu errors, expired tokens, a held lease) are recorded on the user and
returned; only unexpected ones raise, so Lambda retries them and then sends them to the on-failure
queue. A failure record from that queue can be replayed as is: its ``requestPayload`` is the request
(open_id, reason, delivery_id), and the logs name the failed invocation (``replay_of``).

``delivery_id`` is the push's ``header.event_id`` (Feishu's id of the delivery, not a calendar event's
id). Requests queued before it had that name carry it as ``event_id``; a replay of such a failure record
still logs it, as ``delivery_id``.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from feishu_mirror import composition
from feishu_mirror.config import FeishuCredentials, Settings, load_credentials
from feishu_mirror.health import record_push_to_mirror_lag
from feishu_mirror.identifiers import MAX_DELIVERY_ID_LENGTH, is_open_id
from feishu_mirror.observability import logger, metrics
from feishu_mirror.sync import CalendarSync, lease_owner

settings = Settings.from_env("USERS_TABLE", "CALENDARS_TABLE", "RATE_LIMIT_TABLE", "TOKEN_KEY_ID")
tracer = Tracer()
SAFETY_SECONDS = 10  # left for the final writes after the last Feishu call
LEASE_MARGIN_SECONDS = 30  # the lease outlives the invocation's timeout by this much
LEGACY_DELIVERY_ID_KEY = "event_id"  # what requests called the delivery id before, in failure records still


def calendar_sync(credentials: FeishuCredentials) -> CalendarSync:
    """The sync engine for one credential set."""
    return composition.for_lambda(settings, credentials).sync


def _payload(event: Any) -> dict[str, Any]:
    """The sync request: the event itself, or the original request of a replayed on-failure record."""
    if not isinstance(event, dict):
        return {}
    replayed = event.get("requestPayload")  # a replayed on-failure destination record
    return replayed if isinstance(replayed, dict) else event


def _delivery_id(request: dict[str, Any]) -> str | None:
    """The push's delivery id, under its name or the one older requests gave it."""
    for key in ("delivery_id", LEGACY_DELIVERY_ID_KEY):
        value = request.get(key)
        if isinstance(value, str):
            return value[:MAX_DELIVERY_ID_LENGTH]
    return None


def _claimed_at(request: dict[str, Any]) -> int:
    claimed_at = request.get("claimed_at")
    return claimed_at if isinstance(claimed_at, int) and not isinstance(claimed_at, bool) else 0


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Async-invoke handler: ``{"open_id", "reason", "delivery_id"}``, or an on-failure record holding it."""
    request = _payload(event)  # every field from the same place, so a replay keeps its reason and delivery_id
    open_id = request.get("open_id")
    if not is_open_id(open_id):
        logger.error("sync_request_invalid")
        return {"outcome": "invalid_request", "error": 'expected {"open_id": "ou_..."}'}
    reason = str(request.get("reason", ""))[:40]
    logger.append_keys(open_id=open_id, reason=reason)
    delivery_id = _delivery_id(request)
    if delivery_id is not None:
        logger.append_keys(delivery_id=delivery_id)
    if request is not event:  # a replay: name the invocation that failed, to find its logs
        failed = event.get("requestContext")
        logger.append_keys(replay_of=str(failed.get("requestId", "") if isinstance(failed, dict) else "")[:128])
    remaining = context.get_remaining_time_in_millis() / 1000
    result = calendar_sync(load_credentials(settings)).sync_user(
        open_id,
        owner=lease_owner(context.aws_request_id),  # unique: Lambda may run one event twice at once
        deadline=time.monotonic() + remaining - SAFETY_SECONDS,
        lease_seconds=int(remaining) + LEASE_MARGIN_SECONDS,
        claimed_at=_claimed_at(request),  # a resync's claim may have lapsed while its invocation waited
    )
    record_push_to_mirror_lag(result, now=time.time())
    return result.as_dict()
