"""Test harness for the integration tier: the services as ``composition`` builds them, on DynamoDB Local,
with tokens sealed by the local KMS and a real client on the simulator."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import TYPE_CHECKING, Any

from feishu_mirror import composition
from feishu_mirror.composition import FeishuApp, GivenClients, Services, Tables
from feishu_mirror.config import FeishuCredentials, Settings
from feishu_mirror.dynamodb.mirror import calendar_key
from feishu_mirror.dynamodb.values import attribute_values, plain
from feishu_mirror.feishu import RateGate, RetryPolicy
from feishu_mirror.models import CALENDAR_FIELDS, SyncResult, TokenGrant, UserIdentity
from feishu_mirror.sync import CalendarSync
from feishu_mirror.token_vault import DataKeys, KmsDataKeys
from local.feishu_sim import OAUTH_TOKEN_PATH, FeishuSimulator

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_kms.client import KMSClient

    from feishu_mirror.dynamodb.user_tokens import UserTokens


class RecordingInvoker:
    """Stands in for the Lambda API: records which users a sync was started for."""

    def __init__(self, invoked: list[str]) -> None:
        self.invoked = invoked

    def invoke(self, open_id: str, reason: str, *, delivery_id: str = "", claimed_at: int = 0) -> None:
        """Record the invocation."""
        self.invoked.append(open_id)


class Harness:
    """The services as ``composition`` builds them, on DynamoDB Local, the local KMS and the Feishu
    simulator (with a recording invoker), plus assertions."""

    def __init__(self, client: DynamoDBClient, settings: Settings, sim: FeishuSimulator, kms: KMSClient) -> None:
        self.client = client
        self.settings = dataclasses.replace(settings, feishu_base_url=sim.url, feishu_accounts_url=sim.url)
        self.sim = sim
        self.kms = kms
        self.invoked: list[str] = []
        self.invoker = RecordingInvoker(self.invoked)
        self.clients = GivenClients(client, self.invoker, KmsDataKeys(kms, settings.token_key_id))
        self.services = composition.build(self.settings, self.clients, self.app())
        self.tables: Tables = self.services.tables
        self.schedule = self.tables.schedule
        self.user_tokens = self.tables.tokens
        self.health = self.tables.health
        self.calendars = self.tables.calendars
        self.listings = self.tables.listings
        assert self.tables.events is not None
        self.events = self.tables.events
        self.vault = self.services.vault
        self.pings = self.services.pings

    def app(
        self, *, read_timeout: float = 10.0, clock_offset: float = 0, rate_gate: RateGate | None = None
    ) -> FeishuApp:
        """The simulator's app, as a client talks to it here: short retries (for fast tests) and a clock
        (which dates the tokens it is granted) ``clock_offset`` ahead, as the sync's is."""
        return FeishuApp(
            FeishuCredentials(self.sim.app_id, self.sim.app_secret),
            rate_gate=rate_gate,
            retry=RetryPolicy(max_attempts=4, base_delay=0.05, max_delay=0.2, read_timeout=read_timeout),
            clock=lambda: time.time() + clock_offset,
        )

    def services_for(
        self,
        *,
        page_size: int | None = None,
        clock_offset: float = 0,
        app: FeishuApp | None = None,
        data_keys: DataKeys | None = None,
        tokens: UserTokens | None = None,
    ) -> Services:
        """The services of one invocation, as a function builds them (any part may be swapped for the test's)."""
        settings = dataclasses.replace(self.settings, page_size=page_size or self.settings.page_size)
        clients = dataclasses.replace(self.clients, data_keys=data_keys) if data_keys else self.clients
        tables = dataclasses.replace(self.tables, tokens=tokens) if tokens else self.tables
        return composition.build(
            settings,
            clients,
            app or self.app(clock_offset=clock_offset),
            tables=tables,
            clock=lambda: time.time() + clock_offset,
        )

    def engine(
        self,
        *,
        page_size: int | None = None,
        clock_offset: float = 0,
        app: FeishuApp | None = None,
        data_keys: DataKeys | None = None,
        tokens: UserTokens | None = None,
    ) -> CalendarSync:
        """The sync engine as the sync function builds it (any part may be swapped for the test's)."""
        return self.services_for(
            page_size=page_size, clock_offset=clock_offset, app=app, data_keys=data_keys, tokens=tokens
        ).sync

    def onboard(self, open_id: str, *, extra_calendars: int = 0) -> str:
        """Create the user in Feishu and store their tokens as the OAuth callback would."""
        self.sim.add_user(open_id, f"User {open_id}")
        for n in range(extra_calendars):
            self.sim.create_calendar(open_id, summary=f"Calendar {n}", color=n)
        self.consent_again(open_id)
        return open_id

    def sync(
        self,
        open_id: str,
        *,
        page_size: int | None = None,
        clock_offset: float = 0,
        data_keys: DataKeys | None = None,
        app: FeishuApp | None = None,
    ) -> SyncResult:
        """One sync invocation, as the sync function runs it (``data_keys`` and ``app`` replace the token
        key and the Feishu app's client settings)."""
        engine = self.engine(page_size=page_size, clock_offset=clock_offset, data_keys=data_keys, app=app)
        return engine.sync_user(open_id, owner=str(uuid.uuid4()), deadline=time.monotonic() + 60, lease_seconds=90)

    def consent_again(self, open_id: str, *, revoke_previous: bool = False) -> dict[str, Any]:
        """The user signs in again: Feishu issues a new pair, stored as the OAuth callback stores it."""
        body = self.sim.issue_user_tokens(open_id, revoke_previous=revoke_previous)
        now = int(time.time())
        grant = TokenGrant(
            access_token=body["access_token"],
            access_expires_at=now + int(body["expires_in"]),
            refresh_token=body.get("refresh_token"),
            refresh_expires_at=now + int(body["refresh_token_expires_in"]),
            scope=body.get("scope", ""),
        )
        self.user_tokens.save_authorization(
            UserIdentity(open_id, f"User {open_id}"), self.vault.seal(open_id, grant), now
        )
        return body

    def token_requests(self) -> int:
        """How many requests reached the simulator's OAuth token endpoint."""
        return sum(1 for r in self.sim.requests_log if r.path == OAUTH_TOKEN_PATH)

    def tokens(self, open_id: str) -> tuple[str, str | None]:
        """The user's stored (access, refresh) tokens, opened with the token key."""
        user = self.schedule.get(open_id)
        assert user is not None, f"no user {open_id}"
        opened = self.vault.open(open_id, user.access_token, user.refresh_token)
        return opened.access_token, opened.refresh_token

    # ------------------------------------------------------------------ reading and poking the tables
    def items(self, open_id: str) -> dict[str, dict[str, Any]]:
        """Every calendar item of the user (tombstones included), by calendar id."""
        pages = self.client.get_paginator("query").paginate(
            TableName=self.settings.calendars_table,
            KeyConditionExpression="open_id = :o",
            ExpressionAttributeValues=attribute_values({":o": open_id}),
            ConsistentRead=True,
        )
        return {item["calendar_id"]["S"]: plain(item) for page in pages for item in page["Items"]}

    def event_items(self, open_id: str, calendar_id: str) -> dict[str, dict[str, Any]]:
        """Every event item of one calendar of the user (tombstones included), by event id."""
        pages = self.client.get_paginator("query").paginate(
            TableName=self.settings.events_table,
            KeyConditionExpression="calendar_key = :k",
            ExpressionAttributeValues=attribute_values({":k": calendar_key(open_id, calendar_id)}),
            ConsistentRead=True,
        )
        return {item["event_id"]["S"]: plain(item) for page in pages for item in page["Items"]}

    def live_events(self, open_id: str, calendar_id: str) -> dict[str, dict[str, Any]]:
        """Event items without ``deleted_at``."""
        return {eid: item for eid, item in self.event_items(open_id, calendar_id).items() if "deleted_at" not in item}

    def live_items(self, open_id: str) -> dict[str, dict[str, Any]]:
        """Items without ``deleted_at``."""
        return {cid: item for cid, item in self.items(open_id).items() if "deleted_at" not in item}

    def user(self, open_id: str) -> dict[str, Any]:
        """The user's item as plain values."""
        found = self.tables.users.get_plain(open_id)
        assert found is not None, f"no user {open_id}"
        return found

    def set_user(self, open_id: str, **attributes: Any) -> None:
        """Overwrite attributes of a user's item."""
        names = {f"#a{i}": name for i, name in enumerate(attributes)}
        values = {f":v{i}": value for i, value in enumerate(attributes.values())}
        self.client.update_item(
            TableName=self.settings.users_table,
            Key={"open_id": {"S": open_id}},
            UpdateExpression="SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(attributes))),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=attribute_values(values),
        )

    def remove_user_attribute(self, open_id: str, name: str) -> None:
        """Remove one attribute of a user's item."""
        self.client.update_item(
            TableName=self.settings.users_table,
            Key={"open_id": {"S": open_id}},
            UpdateExpression="REMOVE #a",
            ExpressionAttributeNames={"#a": name},
        )

    def assert_mirror_matches(self, open_id: str) -> None:
        """The live mirror equals Feishu's truth, field by field; nothing else is live."""
        assert_mirror_matches(self.sim.calendars(open_id), self.live_items(open_id))


def assert_mirror_matches(truth: list[dict[str, Any]], live_items: dict[str, dict[str, Any]]) -> None:
    """Compare Feishu's calendars with the live items of the calendars table, field by field."""
    expected = {c["calendar_id"]: {k: v for k, v in c.items() if k in CALENDAR_FIELDS} for c in truth}
    actual = {cid: {k: v for k, v in item.items() if k in CALENDAR_FIELDS} for cid, item in live_items.items()}
    assert actual == expected
