"""The composition root: the one place the object graph is built, from settings and clients.

``build(settings, clients, feishu)`` is pure — it reads no environment and creates no client — and lazy:
each service is built on first use, and the modules only it needs are imported then, so a function
pays only for what it uses (the callback's path never imports the sync engine and ``requests``, the read
side and its RRULE expansion, or the token vault). Handlers take their warm singletons from ``for_lambda``
(cached per container, per settings and Feishu credentials: the secret may rotate); tests and benchmarks
call ``build`` with clients of their own (DynamoDB Local, a recording invoker, a local KMS, the Feishu
simulator), and may swap one DynamoDB adapter for their own through ``tables``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property
from typing import TYPE_CHECKING, Protocol

from feishu_mirror import aws_clients
from feishu_mirror.config import FeishuCredentials, Settings
from feishu_mirror.dynamodb.fencing import FencedWrites
from feishu_mirror.dynamodb.listings import ListingStates
from feishu_mirror.dynamodb.mirror import CalendarStore, EventStore
from feishu_mirror.dynamodb.oauth_states import OAuthStateStore
from feishu_mirror.dynamodb.user_health import UserHealthReads
from feishu_mirror.dynamodb.user_schedule import SyncSchedule
from feishu_mirror.dynamodb.user_tokens import UserTokens
from feishu_mirror.dynamodb.users import UsersTable
from feishu_mirror.errors import ConfigError
from feishu_mirror.invoker import LambdaSyncInvoker, SyncInvoker
from feishu_mirror.pings import PingDispatcher

if TYPE_CHECKING:
    import requests
    from mypy_boto3_dynamodb.client import DynamoDBClient

    from feishu_mirror.agenda import AgendaService
    from feishu_mirror.dynamodb.agenda_reader import AgendaReader
    from feishu_mirror.dynamodb.rate_gate import DynamoRateGate
    from feishu_mirror.feishu import FeishuClient, RateGate, RetryPolicy
    from feishu_mirror.onboarding import Onboarding
    from feishu_mirror.resync import Resync
    from feishu_mirror.status import StatusService
    from feishu_mirror.sync import CalendarSync
    from feishu_mirror.token_vault import DataKeys, TokenVault


# ------------------------------------------------------------------------------ what it is built from
class Clients(Protocol):
    """What the services run on; each is asked for only when a service needs it (None: not available)."""

    @property
    def dynamodb(self) -> DynamoDBClient:
        """The DynamoDB client."""
        ...

    @property
    def invoker(self) -> SyncInvoker | None:
        """What starts a sync in the background."""
        ...

    @property
    def data_keys(self) -> DataKeys | None:
        """Where the data keys sealing users' tokens come from (KMS)."""
        ...


@dataclass(frozen=True, slots=True)
class GivenClients:
    """Clients made by the caller (tests, benchmarks, local tools)."""

    dynamodb: DynamoDBClient
    invoker: SyncInvoker | None = None
    data_keys: DataKeys | None = None


class LambdaClients:
    """A Lambda container's clients (``aws_clients``): the sync function invoked through the Lambda API,
    data keys from the ``TOKEN_KEY_ID`` KMS key."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @property
    def dynamodb(self) -> DynamoDBClient:
        """The container's DynamoDB client."""
        return aws_clients.dynamodb()

    @cached_property
    def invoker(self) -> SyncInvoker | None:
        """Asynchronous invokes of ``SYNC_FUNCTION_NAME``."""
        return LambdaSyncInvoker(aws_clients.lambda_client(), self._settings.sync_function_name)

    @cached_property
    def data_keys(self) -> DataKeys | None:
        """The ``TOKEN_KEY_ID`` key, when the function has one."""
        if not self._settings.token_key_id:
            return None
        from feishu_mirror.token_vault import KmsDataKeys  # noqa: PLC0415 - cryptography stays off the callback's path

        return KmsDataKeys(aws_clients.kms(), self._settings.token_key_id)


@dataclass(frozen=True, slots=True)
class FeishuApp:
    """The Feishu app the services call as, and how its client talks (tests shorten waits and timeouts;
    ``rate_gate`` replaces the app-wide DynamoDB gate)."""

    credentials: FeishuCredentials
    rate_gate: RateGate | None = None
    retry: RetryPolicy | None = None
    session: requests.Session | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time


# ------------------------------------------------------------------------------ the adapters
@dataclass(frozen=True, slots=True)
class Tables:
    """The DynamoDB adapters, one per table or concern (``feishu_mirror.dynamodb``).

    ``events`` is None when events are not mirrored (no events or event-listings table configured).
    """

    users: UsersTable
    fenced: FencedWrites
    schedule: SyncSchedule
    tokens: UserTokens
    health: UserHealthReads
    calendars: CalendarStore
    events: EventStore | None
    listings: ListingStates
    oauth_states: OAuthStateStore

    @classmethod
    def on(cls, settings: Settings, dynamodb: DynamoDBClient, *, sleep: Callable[[float], None] = time.sleep) -> Tables:
        """The adapters of the tables ``settings`` name (a table a function does not use may be unnamed)."""
        users = UsersTable(dynamodb, settings.users_table, sleep=sleep)
        fenced = FencedWrites(dynamodb, settings.users_table, sleep=sleep)
        ttl = settings.tombstone_ttl_seconds
        events_mirrored = bool(settings.events_table and settings.event_listings_table)
        return cls(
            users=users,
            fenced=fenced,
            schedule=SyncSchedule(users),
            tokens=UserTokens(users),
            health=UserHealthReads(users),
            calendars=CalendarStore(dynamodb, settings.calendars_table, fenced, tombstone_ttl_seconds=ttl, sleep=sleep),
            events=EventStore(dynamodb, settings.events_table, fenced, tombstone_ttl_seconds=ttl, sleep=sleep)
            if events_mirrored
            else None,
            listings=ListingStates(dynamodb, fenced, settings.event_listings_table),
            oauth_states=OAuthStateStore(dynamodb, settings.oauth_state_table),
        )


# ------------------------------------------------------------------------------ the services
class Services:
    """The object graph of one configuration: every service, built on first use (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        clients: Clients,
        feishu_app: FeishuApp | None,
        tables: Tables,
        *,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.feishu_app = feishu_app
        self.tables = tables
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep

    def _invoker(self) -> SyncInvoker:
        invoker = self.clients.invoker
        if invoker is None:
            raise ConfigError("these services were built without a way to start syncs")
        return invoker

    def _app(self) -> FeishuApp:
        if self.feishu_app is None:
            raise ConfigError("these services were built without Feishu credentials")
        return self.feishu_app

    @cached_property
    def pings(self) -> PingDispatcher:
        """Turns pushes (and operators' resyncs) into at most one pending sync per user."""
        return PingDispatcher(self.tables.schedule, self._invoker(), clock=self._clock)

    @cached_property
    def resync(self) -> Resync:
        """The scheduled safety net."""
        from feishu_mirror.resync import Resync  # noqa: PLC0415 - only the resync function needs it

        return Resync(
            self.tables.schedule, self._invoker(), max_users=self.settings.resync_max_users_per_run, clock=self._clock
        )

    @cached_property
    def vault(self) -> TokenVault:
        """Seals and opens users' tokens."""
        from feishu_mirror.token_vault import TokenVault  # noqa: PLC0415 - cryptography stays off the callback's path

        keys = self.clients.data_keys
        if keys is None:
            raise ConfigError("these services were built without a key for users' tokens (TOKEN_KEY_ID)")
        return TokenVault(keys)

    @cached_property
    def rate_gate(self) -> DynamoRateGate:
        """The app-wide gate every Feishu call reserves a slot of, each API on its own."""
        from feishu_mirror.dynamodb.rate_gate import DynamoRateGate  # noqa: PLC0415

        return DynamoRateGate(
            self.clients.dynamodb,
            self.settings.rate_limit_table,
            f"feishu-app:{self._app().credentials.app_id}",
            requests_per_minute=self.settings.feishu_requests_per_minute,
            clock=self._clock,
            monotonic=self._monotonic,
            sleep=self._sleep,
        )

    @cached_property
    def feishu(self) -> FeishuClient:
        """The Feishu client, behind the rate gate."""
        from feishu_mirror.feishu import FeishuClient  # noqa: PLC0415 - requests stays off the callback's path

        app = self._app()
        return FeishuClient(
            base_url=self.settings.feishu_base_url,
            accounts_url=self.settings.feishu_accounts_url,
            app_id=app.credentials.app_id,
            app_secret=app.credentials.app_secret,
            rate_gate=app.rate_gate or self.rate_gate,
            session=app.session,
            retry=app.retry,
            sleep=app.sleep,
            clock=app.clock,
        )

    @cached_property
    def sync(self) -> CalendarSync:
        """The sync engine (calendars, and events when their tables are configured)."""
        from feishu_mirror.sync import CalendarSync  # noqa: PLC0415 - the sync engine stays off other paths

        tables = self.tables
        return CalendarSync(
            leases=tables.schedule,
            authorization=tables.tokens,
            calendars=tables.calendars,
            listings=tables.listings,
            events=tables.events,
            feishu=self.feishu,
            settings=self.settings,
            vault=self.vault,
            clock=self._clock,
            monotonic=self._monotonic,
        )

    @cached_property
    def onboarding(self) -> Onboarding:
        """The two OAuth steps."""
        from feishu_mirror.oauth_state import StateSigner  # noqa: PLC0415
        from feishu_mirror.onboarding import STATE_TTL_SECONDS, Onboarding  # noqa: PLC0415

        return Onboarding(
            feishu=self.feishu,
            users=self.tables.tokens,
            states=self.tables.oauth_states,
            signer=StateSigner(self._app().credentials.app_secret, STATE_TTL_SECONDS),
            pings=self.pings,
            vault=self.vault,
            clock=self._clock,
        )

    @cached_property
    def status(self) -> StatusService:
        """The operator's view."""
        from feishu_mirror.status import StatusService  # noqa: PLC0415

        return StatusService(
            users=self.tables.health,
            calendars=self.tables.calendars,
            pings=self.pings,
            stale_after_seconds=self.settings.stale_after_seconds,
            event_listings=self.tables.listings if self.settings.event_listings_table else None,
            clock=self._clock,
        )

    @cached_property
    def agenda_reader(self) -> AgendaReader:
        """The read side's projected reads of the users, calendars and events tables (it counts read units)."""
        from feishu_mirror.dynamodb.agenda_reader import AgendaReader  # noqa: PLC0415 - dateutil stays off other paths

        return AgendaReader(
            self.clients.dynamodb,
            users_table=self.settings.users_table,
            calendars_table=self.settings.calendars_table,
            events_table=self.settings.events_table,
        )

    @cached_property
    def agenda(self) -> AgendaService:
        """The read side (calendars, agenda, free/busy)."""
        from feishu_mirror.agenda import AgendaService  # noqa: PLC0415 - dateutil stays off other paths

        return AgendaService(self.agenda_reader, clock=self._clock)


def build(
    settings: Settings,
    clients: Clients,
    feishu: FeishuApp | None = None,
    *,
    tables: Tables | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Services:
    """The services of one configuration: pure and lazy (see the module docstring). ``feishu`` is needed by
    the services that call Feishu (sync, onboarding); ``tables`` replaces the DynamoDB adapters; ``clock``
    (epoch seconds), ``monotonic`` (deadlines) and ``sleep`` (waits and backoffs) are time as the services
    see it, which a simulation may make virtual."""
    return Services(
        settings,
        clients,
        feishu,
        tables if tables is not None else Tables.on(settings, clients.dynamodb, sleep=sleep),
        clock=clock,
        monotonic=monotonic,
        sleep=sleep,
    )


@cache
def for_lambda(settings: Settings, credentials: FeishuCredentials | None = None) -> Services:
    """The container's services: built once per settings and credential set, on the container's clients."""
    return build(settings, LambdaClients(settings), FeishuApp(credentials) if credentials else None)


def forget() -> None:
    """Drop the container's services and clients (tests that change the environment between runs)."""
    for_lambda.cache_clear()
    aws_clients.forget()
