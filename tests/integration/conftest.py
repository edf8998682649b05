"""Integration tier fixtures: DynamoDB Local with fresh copies of the template's tables per test,
a fresh Feishu simulator per test, and the local KMS with the template's token key."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from feishu_mirror.config import Settings
from local.dynamodb_local import DynamoDBLocal, create_tables
from local.feishu_sim import FeishuSimulator
from local.kms import LocalKms
from local.stack import ROOT
from local.template import Template, load
from tests.integration.callback_handler import LambdaRecorder, callback_app
from tests.integration.harness import Harness

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_kms.client import KMSClient

TABLE_SETTINGS = {
    "CalendarsTable": "CALENDARS_TABLE",
    "EventsTable": "EVENTS_TABLE",
    "EventListingsTable": "EVENT_LISTINGS_TABLE",
    "UsersTable": "USERS_TABLE",
    "OAuthStateTable": "OAUTH_STATE_TABLE",
    "IdempotencyTable": "IDEMPOTENCY_TABLE",
    "RateLimitTable": "RATE_LIMIT_TABLE",
}


@pytest.fixture(scope="session")
def dynamodb() -> Iterator[DynamoDBLocal]:
    """One DynamoDB Local for the session."""
    with DynamoDBLocal(ROOT / ".local" / "dynamodb") as instance:
        yield instance


@pytest.fixture(scope="session")
def dynamodb_endpoint(dynamodb: DynamoDBLocal) -> str:
    """Its endpoint URL (for code that builds its own clients, like the handlers)."""
    return dynamodb.endpoint


@pytest.fixture(scope="session")
def dynamodb_client(dynamodb: DynamoDBLocal) -> DynamoDBClient:
    """A client for it."""
    return dynamodb.client()


@pytest.fixture(scope="session")
def local_kms() -> Iterator[LocalKms]:
    """One local KMS (moto's server) for the session."""
    with LocalKms() as instance:
        yield instance


@pytest.fixture(scope="session")
def kms_client(local_kms: LocalKms) -> KMSClient:
    """A client for it."""
    return local_kms.client()


@pytest.fixture(scope="session")
def token_key(local_kms: LocalKms) -> str:
    """The ARN of the session's token key (the template's TokenKey: symmetric, rotation on)."""
    return local_kms.create_key("integration tests' token key")


@pytest.fixture
def settings(dynamodb_client: DynamoDBClient, token_key: str) -> Settings:
    """Settings naming fresh copies of the template's tables (so tests never see each other's data)."""
    template: Template = load(ROOT, prefix=f"t{uuid.uuid4().hex[:10]}-")
    create_tables(dynamodb_client, template.tables, template.table_names)
    env = {TABLE_SETTINGS[lid]: name for lid, name in template.table_names.items()}
    return Settings.from_env(env={**env, "TOKEN_KEY_ID": token_key})


@pytest.fixture
def sim() -> Iterator[FeishuSimulator]:
    """A fresh Feishu simulator per test."""
    with FeishuSimulator(app_id=f"cli_{uuid.uuid4().hex[:8]}") as simulator:
        yield simulator


@pytest.fixture
def harness(
    dynamodb_client: DynamoDBClient, settings: Settings, sim: FeishuSimulator, kms_client: KMSClient
) -> Harness:
    """Domain services on DynamoDB Local, the local KMS and the simulator."""
    return Harness(dynamodb_client, settings, sim, kms_client)


@pytest.fixture
def recorder() -> Iterator[LambdaRecorder]:
    """A stand-in Lambda API that records the syncs the callback starts."""
    with LambdaRecorder() as running:
        yield running


@pytest.fixture
def callback_env() -> dict[str, str]:
    """Extra environment for the callback handler (a test module overrides this fixture to set some)."""
    return {}


@pytest.fixture
def app(
    monkeypatch: pytest.MonkeyPatch,
    *,
    settings: Settings,
    sim: FeishuSimulator,
    dynamodb_endpoint: str,
    recorder: LambdaRecorder,
    callback_env: dict[str, str],
) -> Iterator[ModuleType]:
    """The callback handler on this test's tables and simulator, with the recording Lambda API."""
    with callback_app(
        monkeypatch,
        settings=settings,
        sim=sim,
        dynamodb_endpoint=dynamodb_endpoint,
        lambda_endpoint=recorder.url,
        extra_env=callback_env,
    ) as module:
        yield module
