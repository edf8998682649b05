"""Building the clients and services the handlers use, once per container.

AWS endpoints are never hard-coded: boto3 honours ``AWS_ENDPOINT_URL_DYNAMODB``,
``AWS_ENDPOINT_URL_LAMBDA`` and ``AWS_ENDPOINT_URL_KMS``, which is how the same code runs against
DynamoDB Local, a local Lambda API and a local stand-in for KMS.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from feishu_mirror.config import FeishuCredentials, Settings
from feishu_mirror.invoker import LambdaSyncInvoker
from feishu_mirror.pings import PingDispatcher
from feishu_mirror.store import CalendarStore, DynamoRateGate, EventListingStore, EventStore, UserStore

if TYPE_CHECKING:
    from feishu_mirror.agenda import AgendaService
    from feishu_mirror.feishu import FeishuClient
    from feishu_mirror.sync import EventMirror
    from feishu_mirror.token_vault import TokenVault

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_kms.client import KMSClient
    from mypy_boto3_lambda.client import LambdaClient


@cache
def dynamodb() -> DynamoDBClient:
    """The DynamoDB client, with short timeouts so a stuck call fails fast."""
    config = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})
    return boto3.client("dynamodb", config=config)


@cache
def lambda_client() -> LambdaClient:
    """The Lambda client used to start syncs."""
    config = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})
    return boto3.client("lambda", config=config)


@cache
def kms() -> KMSClient:
    """The KMS client that wraps and unwraps the data keys of users' tokens."""
    config = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})
    return boto3.client("kms", config=config)


@cache
def token_vault(settings: Settings) -> TokenVault:
    """Seals and opens users' tokens with the ``TOKEN_KEY_ID`` KMS key (sync and OAuth functions only)."""
    from feishu_mirror.token_vault import KmsDataKeys, TokenVault  # noqa: PLC0415 - off the callback's import path

    return TokenVault(KmsDataKeys(kms(), settings.token_key_id))


@cache
def users(settings: Settings) -> UserStore:
    """The users table."""
    return UserStore(dynamodb(), settings.users_table)


@cache
def calendars(settings: Settings) -> CalendarStore:
    """The calendars table."""
    return CalendarStore(
        dynamodb(), settings.calendars_table, settings.users_table, tombstone_ttl_seconds=settings.tombstone_ttl_seconds
    )


@cache
def event_listings(settings: Settings) -> EventListingStore | None:
    """The event-listings table, or None when events are not mirrored."""
    if not settings.event_listings_table:
        return None
    return EventListingStore(dynamodb(), settings.event_listings_table, settings.users_table)


@cache
def event_mirror(settings: Settings) -> EventMirror | None:
    """The events table and its listing state, or None when events are not mirrored (no tables set)."""
    from feishu_mirror.sync import EventMirror  # noqa: PLC0415 - keeps the sync engine off other handlers' paths

    if not (settings.events_table and settings.event_listings_table):
        return None
    return EventMirror(
        events=EventStore(
            dynamodb(),
            settings.events_table,
            settings.users_table,
            tombstone_ttl_seconds=settings.tombstone_ttl_seconds,
        ),
        listings=EventListingStore(dynamodb(), settings.event_listings_table, settings.users_table),
    )


@cache
def agenda(settings: Settings) -> AgendaService:
    """The read side (calendars, agenda, free/busy) on the users, calendars and events tables."""
    from feishu_mirror.agenda import AgendaService  # noqa: PLC0415 - keeps dateutil off other handlers' paths
    from feishu_mirror.agenda_store import AgendaReader  # noqa: PLC0415

    reader = AgendaReader(
        dynamodb(),
        users_table=settings.users_table,
        calendars_table=settings.calendars_table,
        events_table=settings.events_table,
    )
    return AgendaService(reader)


@cache
def pings(settings: Settings) -> PingDispatcher:
    """The ping dispatcher that starts syncs through the Lambda API."""
    return PingDispatcher(users(settings), LambdaSyncInvoker(lambda_client(), settings.sync_function_name))


@cache
def feishu(settings: Settings, credentials: FeishuCredentials) -> FeishuClient:
    """The Feishu client, behind the rate gate that budgets each Feishu API of the app on its own."""
    from feishu_mirror.feishu import FeishuClient  # noqa: PLC0415 - keeps requests off the callback's import path

    gate = DynamoRateGate(
        dynamodb(),
        settings.rate_limit_table,
        f"feishu-app:{credentials.app_id}",
        requests_per_minute=settings.feishu_requests_per_minute,
    )
    return FeishuClient(
        base_url=settings.feishu_base_url,
        accounts_url=settings.feishu_accounts_url,
        app_id=credentials.app_id,
        app_secret=credentials.app_secret,
        rate_gate=gate,
    )
