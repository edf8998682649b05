"""The callback built on lark-oapi: the cold-start benchmark's comparison, never deployed.

It does the work of ``functions/callback/app.py`` — the credentials from Secrets Manager, the
url_verification answer, a calendar change decrypted, verified and parsed, deduplicated on
``header.event_id`` with Powertools idempotency, one sync started per user — but lets lark-oapi's
``EventDispatcherHandler`` decrypt, verify and parse, as the official SDK's users would.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import lark_oapi as lark
from requests.structures import CaseInsensitiveDict

from feishu_mirror import aws_clients, composition
from feishu_mirror.config import Settings, load_credentials

settings = Settings.from_env("USERS_TABLE", "IDEMPOTENCY_TABLE", "SYNC_FUNCTION_NAME")
invocation: dict[str, Any] = {}  # the running invocation's Lambda context, for the idempotency records


@cache
def start_syncs() -> Any:
    """Start the syncs of one delivery once per delivery id (the idempotency utility, built on first use)."""
    from aws_lambda_powertools.utilities.idempotency import (  # noqa: PLC0415 - as the callback defers it
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )

    config = IdempotencyConfig(
        event_key_jmespath="delivery_id",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=settings.dedup_ttl_seconds,
    )
    persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table, boto3_client=aws_clients.dynamodb())
    config.register_lambda_context(invocation["context"])

    @idempotent_function(data_keyword_argument="delivery", config=config, persistence_store=persistence)
    def dispatch_once(*, delivery: dict[str, Any]) -> dict[str, Any]:
        outcome = composition.for_lambda(settings).pings.dispatch(
            delivery["open_ids"], reason="calendar_changed", delivery_id=delivery["delivery_id"]
        )
        return outcome.as_dict()

    return dispatch_once


def on_calendar_changed(data: Any) -> None:
    """lark-oapi's handler for ``calendar.calendar.changed_v4``."""
    open_ids = [user.open_id for user in data.event.user_id_list or [] if user.open_id]
    start_syncs()(delivery={"delivery_id": data.header.event_id, "open_ids": open_ids})


@cache
def dispatcher(encrypt_key: str, verification_token: str) -> Any:
    """lark-oapi's dispatcher for one credential set."""
    return (
        lark.EventDispatcherHandler.builder(encrypt_key, verification_token, lark.LogLevel.ERROR)
        .register_p2_calendar_calendar_changed_v4(on_calendar_changed)
        .build()
    )


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0) handler."""
    invocation["context"] = context
    credentials = load_credentials(settings)
    request = lark.RawRequest()
    request.uri = event.get("rawPath", "")
    request.headers = CaseInsensitiveDict(event.get("headers") or {})  # API Gateway lowercases header names
    request.body = str(event.get("body") or "").encode()
    reply = dispatcher(credentials.encrypt_key, credentials.verification_token).do(request)
    return {
        "statusCode": reply.status_code,
        "headers": {"Content-Type": "application/json"},
        "body": (reply.content or b"").decode(),
    }
