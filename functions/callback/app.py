"""Callback function (``POST /feishu/events``): verify, deduplicate, start one sync per user, answer.

Never calls Feishu. Bad input gets a 4xx with a short reason; an AWS dependency being down gets a
503 so that Feishu retries the delivery (its retries are deduplicated on ``header.event_id``, the
delivery id), and so does a deployment whose secret lacks the Encrypt Key or the Verification Token: it
refuses everything. Its log lines carry the push's ``delivery_id``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from feishu_mirror import aws_clients, composition
from feishu_mirror.callback import CallbackVerifier, Challenge, ChangeNotice, IgnoredNotice
from feishu_mirror.config import FeishuCredentials, Settings, load_credentials
from feishu_mirror.errors import CallbackRejected, ConfigError
from feishu_mirror.observability import count, logger, metrics

settings = Settings.from_env("USERS_TABLE", "IDEMPOTENCY_TABLE", "SYNC_FUNCTION_NAME")


@cache
def deduplicated_dispatch() -> tuple[Callable[..., dict[str, Any]], Any, type[Exception]]:
    """Powertools idempotency around the ping dispatch, keyed on the delivery id ``header.event_id`` (built
    once, by ``prepare_container``). Returns the dispatch, its config (to register each invocation's
    context) and the in-progress error.
    """
    from aws_lambda_powertools.utilities.idempotency import (  # noqa: PLC0415 - see the docstring
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )
    from aws_lambda_powertools.utilities.idempotency.exceptions import (  # noqa: PLC0415
        IdempotencyAlreadyInProgressError,
    )

    config = IdempotencyConfig(
        event_key_jmespath="header.event_id",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=settings.dedup_ttl_seconds,  # longer than Feishu's ~7 h retry window
        response_hook=lambda response, _record: {**response, "duplicate": True},
    )
    persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table, boto3_client=aws_clients.dynamodb())

    @idempotent_function(data_keyword_argument="event", config=config, persistence_store=persistence)
    def dispatch(*, event: dict[str, Any], request: ChangeNotice) -> dict[str, Any]:  # noqa: ARG001 - the key
        """Start syncs for the users of one push; runs once per delivery id (``header.event_id``)."""
        reason = "event_changed" if request.calendar_id else "calendar_changed"
        pings = composition.for_lambda(settings).pings
        outcome = pings.dispatch(
            request.open_ids, reason=reason, calendar_id=request.calendar_id, delivery_id=request.delivery_id
        )
        return outcome.as_dict()

    return dispatch, config, IdempotencyAlreadyInProgressError


def prepare_container() -> None:
    """Do while Lambda initialises the container what every cold start needs first: read the Feishu
    credentials (cached 5 minutes), build the DynamoDB and Lambda clients and the idempotency utility.

    Lambda runs the init phase at full CPU but the handler at the function's share (about 0.3 vCPU at
    512 MB), and a first boto3 client alone costs ~0.1 s of CPU: done in the handler, it could push a cold
    url_verification answer past Feishu's 1 s. Never fails the init: whatever goes wrong here happens
    again in the handler, which answers it (503 while the secret cannot be read).
    """
    try:
        load_credentials(settings)
        deduplicated_dispatch()
        composition.for_lambda(settings).pings  # noqa: B018 - builds the DynamoDB and Lambda clients now
    except Exception as exc:  # the handler meets the same failure and answers it
        logger.warning("container_preparation_failed", extra={"error": type(exc).__name__})


def dispatch(request: ChangeNotice, context: LambdaContext) -> dict[str, Any]:
    """Dispatch one verified push at most once; a duplicate returns the first result, marked."""
    dispatch_once, config, in_progress = deduplicated_dispatch()
    config.register_lambda_context(context)  # in-progress records expire with this invocation
    try:
        return dispatch_once(event=request.payload, request=request)
    except in_progress:
        return {"duplicate": True, "in_progress": True}


@cache
def verifier(credentials: FeishuCredentials) -> CallbackVerifier:
    """One verifier per credential set (the secret may rotate)."""
    return CallbackVerifier(
        encrypt_key=credentials.encrypt_key,
        verification_token=credentials.verification_token,
        app_id=credentials.app_id,
        max_skew_seconds=settings.callback_max_skew_seconds,
        max_ahead_seconds=settings.callback_max_ahead_seconds,
    )


def _reply(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}


def _raw_body(event: dict[str, Any]) -> bytes:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CallbackRejected(400, "body is not valid base64") from exc
    # surrogatepass: a lone surrogate (a JSON "\ud800" escape in the event) becomes bytes that fail the
    # checks with a 4xx instead of a UnicodeEncodeError and a 5xx
    return body.encode("utf-8", "surrogatepass") if isinstance(body, str) else b""


def verify(event: dict[str, Any]) -> Challenge | ChangeNotice | IgnoredNotice:
    """Verify the request as API Gateway delivers it; raises ``CallbackRejected`` or ``ConfigError``."""
    headers = {str(name).lower(): str(value) for name, value in (event.get("headers") or {}).items()}
    return verifier(load_credentials(settings)).verify(headers, _raw_body(event))


def acknowledge(request: ChangeNotice, context: LambdaContext) -> tuple[int, dict[str, Any]]:
    """Dispatch a verified change once and say how it went."""
    try:
        result = dispatch(request, context)
    except Exception:
        logger.exception("callback_dispatch_failed")
        return 503, {"msg": "temporarily unavailable, retry later"}
    if result.get("in_progress"):
        # The first delivery is still running — or died mid-way, leaving its record until the
        # invocation's timeout. A non-200 makes Feishu retry later, when that is settled either way.
        count("DuplicatesInProgress")
        return 409, {"msg": "this event is being processed; retry later"}
    if result.get("duplicate"):
        count("DuplicatesDropped")
    logger.info("event_dispatched", extra=result)
    return 200, {"msg": "success", **result}


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0) handler."""
    try:
        request = verify(event)
    except CallbackRejected as exc:
        count("CallbacksRejected")
        logger.info("callback_rejected", extra={"status": exc.status, "reason": exc.reason})
        return _reply(exc.status, {"msg": exc.reason})
    except ConfigError as exc:
        # Fails closed: nothing is accepted unverified. The metric drives the configuration alarm.
        count("CallbackConfigurationErrors")
        logger.error("configuration_error", extra={"error": str(exc)})
        return _reply(503, {"msg": "not configured"})
    if isinstance(request, Challenge):
        count("ChallengesAnswered")
        return _reply(200, {"challenge": request.challenge})
    logger.append_keys(delivery_id=request.delivery_id)
    count("EventsReceived")
    if isinstance(request, IgnoredNotice):
        logger.info("event_ignored", extra={"event_type": request.event_type})
        return _reply(200, {"msg": "ignored"})
    return _reply(*acknowledge(request, context))


prepare_container()
