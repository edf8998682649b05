"""Seeded, reproducible fault schedules against the real sync machinery (calendar list and events).

A schedule onboards a few users whose calendars hold events (日程) — some calendars readable (primary,
shared, resource as reader/writer/owner), others not (free/busy only, third-party) — then interleaves
calendar and event changes, calendar and event pings (which start syncs on threads, as async invokes
would), access granted and revoked, duplicate and concurrent syncs, and faults: 429 with a reset,
5xx (also until the client's retries run out), slow answers past the client's timeout, dropped
connections, empty pages with ``has_more``, 190008 on sync and page tokens, 190002/191002/191000 on
event listings, expired access tokens (so refresh tokens rotate, also in the middle of event
listings), syncs killed after some pages of the calendar list or at some event write (a page of
events, a checkpoint, a commit: a Lambda timeout, no cleanup, the lease stays), and failing async
invokes; and what can happen to tokens: refreshes refused (20026, 20037, 20064, 20073, 20074 and other
codes), refresh answers lost after Feishu processed them (connection closed, read timeout, a gateway's
504), refreshes that keep the refresh token, missing scopes (99991672/76/79 with
``error.permission_violations``, or a grant that lost its calendar scope), one asynchronous event run
twice at once with one request id, and the user signing in again while a sync runs (around its
refresh, or at any moment). Each schedule also picks how Feishu goes on with an event increment longer
than a page (from each page's sync token, by page tokens, or not at all).

Event data comes partly from the official SDK's models (``tests/feishu_models.py``: every field of
``CalendarEvent`` and what it nests, floats as exact text, integers past 64 bits, CJK and emoji, extra
JSON inside the objects), partly in the simulator's own simple shapes; recurring masters get modified
and cancelled occurrences in Feishu's id shapes, and masters are deleted (their exceptions with them).
A quarter of the schedules also put values DynamoDB cannot hold as sent into some events and calendars
(lone surrogates, numbers past 38 digits, NaN, empty keys, nesting past 32 levels, strings past 400 KB).
Then it quiesces, runs one scheduled resync, lets every user who must authorise again do so (each for a
cause the schedule injected: a user in ``reauth_required`` for anything else is locked out), runs the
resync again (and, for held mass deletions, the confirming one) and checks:

* the calendar mirror equals Feishu's truth field by field (``tests/mirror_oracle.py``: numbers by value,
  a field DynamoDB cannot hold dropped and named in ``mirror_reduced`` for a reason that holds), for
  every user;
* the live events of every readable calendar equal Feishu's, field by field by the same oracle —
  cancelled occurrences live, with their status; no live exception without its live master; every
  event of a calendar that is gone or unreadable is a tombstone; every readable calendar's event
  listing is finished (a sync token, no checkpoint) and no calendar is left marked dirty;
* no refresh token was ever presented twice;
* every user is active, synced, with tokens of their latest consent (a user who signed in again during a
  sync keeps that consent);
* every committed ``sync_token`` (calendar list or a calendar's events) came from the last page of a
  listing of the same collection that the same sync applied;
* no Feishu API (method and path template: each has its own limits) saw more requests in any 1 s / 60 s
  window than its limits, and Feishu never refused a request for its rate.

Time is scaled: the simulator's limits and the rate gate are 10× Feishu's, and the client's waits
(``x-ogw-ratelimit-reset``, backoff) are divided by ``TIME_SCALE``, so hundreds of schedules fit in
``make test``. Everything else (DynamoDB Local, HTTP, threads) is real.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from feishu_mirror import composition
from feishu_mirror.composition import FeishuApp, GivenClients, Services
from feishu_mirror.config import FeishuCredentials, Settings
from feishu_mirror.dynamodb.fencing import FencedWrites
from feishu_mirror.dynamodb.listings import ListingStates
from feishu_mirror.dynamodb.mirror import EventStore
from feishu_mirror.dynamodb.values import attribute_values, plain
from feishu_mirror.feishu import FeishuClient, RetryPolicy
from feishu_mirror.models import (
    CALENDAR_FIELDS,
    EVENT_FIELDS,
    REAUTH_REQUIRED,
    Checkpoint,
    CollectionId,
    Event,
    Fence,
    ListingOutcome,
    Page,
    SyncResult,
    TokenGrant,
    UserIdentity,
)
from feishu_mirror.pings import PingDispatcher, PingOutcome
from feishu_mirror.sync import lease_owner
from feishu_mirror.token_vault import DataKeys
from local.aws_calls import CallRecorder
from local.dynamodb_local import create_tables
from local.feishu_sim import (
    CALENDAR_SCOPES,
    EVENT_SYNCABLE_TYPES,
    Fault,
    FeishuSimulator,
    delay,
    drop,
    empty_page,
    feishu_error,
    gateway_timeout,
    http_error,
    late_reply,
    lost_reply,
    rate_limited,
    scope_missing,
    unrotated_refresh,
)
from local.stack import ROOT
from local.template import load
from tests.feishu_models import FeishuData, RandomSource
from tests.mirror_oracle import Oracle

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

TIME_SCALE = 20
RATE_SCALE = 10
LIMIT_PER_SECOND, LIMIT_PER_MINUTE = 50 * RATE_SCALE, 1000 * RATE_SCALE
LEASE_SECONDS = 30
LATER = 7 * 3600  # past every backoff, lease and staleness (of users and of event listings): "the next scheduled run"
PAGE_SIZE = 50  # Feishu's minimum: calendars of more than 50 events list in several pages
RETRY_ATTEMPTS = 4  # the client's attempts at a transient failure
# How Feishu goes on with an event increment longer than a page (see FeishuSimulator.incremental_event_paging):
# mostly from each page's sync token, as its docs imply, sometimes by page tokens or not at all.
INCREMENTAL_EVENT_PAGING: tuple[Literal["sync_token", "page_token", "none"], ...] = ("sync_token",) * 6 + (
    "page_token",
    "none",
)
CALENDARS_PATH = "/open-apis/calendar/v4/calendars"
TOKEN_PATH = "/open-apis/authen/v2/oauth/token"
READER_ROLES = frozenset({"reader", "writer", "owner"})  # the simulator lists events for these roles only
READ_TIMEOUT = 0.5  # the client's: a late_reply answers after it
SDK_SHAPED = 0.3  # of new events and event updates: drawn from the SDK's models, the rest in the simulator's shapes
ODD_SCHEDULES = 0.25  # of schedules: some values are what DynamoDB cannot hold as sent
ODD_VALUES = 0.02  # in those schedules: how often a generated value is one
EXPIRED = "page_token or sync_token expired"
RRULES = ("FREQ=WEEKLY;INTERVAL=1;COUNT=6", "FREQ=DAILY;COUNT=10", "FREQ=WEEKLY;BYDAY=MO,WE,FR")
TABLES = ("UsersTable", "CalendarsTable", "EventsTable", "EventListingsTable", "RateLimitTable")


@functools.cache
def template_tables() -> dict[str, dict[str, Any]]:
    """The template's definitions of the tables a sync uses (read once: parsing the template is slow).

    Without their change streams: no schedule reads them, and DynamoDB Local's transactions slow down
    with every stream-enabled table it has ever held (deleted or not), so a long session would crawl.
    """
    tables = load(ROOT).tables
    return {
        logical_id: {key: value for key, value in tables[logical_id].items() if key != "StreamSpecification"}
        for logical_id in TABLES
    }


def events_path(calendar_id: str) -> str:
    """The event-list path of a calendar (faults injected on it also hit its event subscription)."""
    return f"{CALENDARS_PATH}/{calendar_id}/events"


def is_readable(calendar: dict[str, Any]) -> bool:
    """Whether Feishu (the simulator) lists this calendar's events to its user."""
    return calendar["type"] in EVENT_SYNCABLE_TYPES and calendar["role"] in READER_ROLES


def difference(mirror: dict[str, dict[str, Any]], truth: dict[str, dict[str, Any]]) -> str:
    """Which events the mirror lacks or has too many of, by id (for failure messages)."""
    missing, extra = sorted(truth.keys() - mirror.keys()), sorted(mirror.keys() - truth.keys())
    return f"missing {missing[:3]} (of {len(missing)}), extra {extra[:3]} (of {len(extra)})"


@dataclass
class LastPages:
    """The sync tokens one sync invocation received on last pages: of the calendar list, and by calendar."""

    calendars: set[str] = field(default_factory=set)
    events: dict[str, set[str]] = field(default_factory=dict)


class LambdaKilled(BaseException):
    """The invocation died (timeout, OOM): nothing after this point runs, not even cleanup."""


@dataclass(frozen=True)
class Trap:
    """A fault for the next event-list request of a user that matches ``trigger``, counted when it hits.

    ``faults`` are injected on that calendar's event path just before the request (several: one for
    each attempt the client makes); without any the user's access tokens expire instead (so the
    listing refreshes and rotates the refresh token).
    """

    kind: str
    trigger: Literal["any", "page_token", "sync_token"]
    faults: tuple[Fault, ...] = ()


@dataclass
class Report:
    """What one schedule did, for the failure message and the suite's figures."""

    seed: int
    steps: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    syncs: Counter[str] = field(default_factory=Counter)
    data: Counter[str] = field(default_factory=Counter)  # what the events held, as drawn and as finally mirrored

    def note(self, text: str) -> None:
        """Add a step to the printed schedule."""
        self.steps.append(text)

    def __str__(self) -> str:
        return f"seed={self.seed}\n  " + "\n  ".join(self.steps)


class SyncThreads:
    """The sync function's invocations: each runs on its own thread, like an async invoke."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self.threads: list[threading.Thread] = []
        self.fail_next = 0
        self.errors: list[BaseException] = []

    def invoke(self, open_id: str, reason: str, *, delivery_id: str = "", claimed_at: int = 0) -> None:
        """Start a sync for the user (or fail to hand it over, when told to)."""
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("simulated Lambda API failure")
        self.start(open_id, reason)

    def start(self, open_id: str, reason: str, request_id: str = "") -> None:
        """Run a sync on a new thread (an invocation Lambda accepted or retried; one request id may run twice)."""
        request_id = request_id or uuid.uuid4().hex
        thread = threading.Thread(target=self._guarded, args=(open_id, request_id), name=f"sync-{reason}")
        self.threads.append(thread)
        thread.start()

    def _guarded(self, open_id: str, request_id: str) -> None:
        try:
            self._run(open_id, request_id=request_id)
        except LambdaKilled:
            pass
        except BaseException as exc:
            self.errors.append(exc)

    def join(self) -> None:
        """Wait for every started sync."""
        for thread in self.threads:
            thread.join(60)


class _CallbackPings:
    """The schedule's pushes: the callback function's ping dispatch, its AWS calls attributed to it."""

    def __init__(self, pings: PingDispatcher, calls: CallRecorder) -> None:
        self._pings = pings
        self._calls = calls

    def dispatch(self, open_ids: list[str], reason: str, *, calendar_id: str = "") -> PingOutcome:
        with self._calls.acting_as("CallbackFunction"):
            return self._pings.dispatch(open_ids, reason, calendar_id=calendar_id)


class Schedule:
    """One seeded schedule on fresh tables and a fresh simulator."""

    def __init__(self, seed: int, client: DynamoDBClient, data_keys: DataKeys, calls: CallRecorder) -> None:
        self.rng = random.Random(seed)
        self.calls = calls  # attributes each AWS call to the function whose code makes it
        self.report = Report(seed)
        self.client = client
        prefix = f"f{uuid.uuid4().hex[:8]}-"
        names = {logical_id: prefix + logical_id for logical_id in TABLES}
        create_tables(client, template_tables(), names)
        self.table_names = tuple(names.values())
        self.settings = Settings(
            users_table=names["UsersTable"],
            calendars_table=names["CalendarsTable"],
            events_table=names["EventsTable"],
            event_listings_table=names["EventListingsTable"],
            rate_limit_table=names["RateLimitTable"],
            page_size=PAGE_SIZE,
            feishu_requests_per_minute=950 * RATE_SCALE,
        )
        self.sim = FeishuSimulator(
            app_id=f"cli_{seed}", rate_per_second=LIMIT_PER_SECOND, rate_per_minute=LIMIT_PER_MINUTE
        ).start()
        self.settings = dataclasses.replace(
            self.settings, feishu_base_url=self.sim.url, feishu_accounts_url=self.sim.url
        )
        self.syncs = SyncThreads(self.sync)
        # The functions' services as composition builds them: syncs start on threads, tokens sealed by the local KMS.
        self.clients = GivenClients(client, self.syncs, data_keys)
        self.services = composition.build(self.settings, self.clients, self._app())
        self.tables = self.services.tables
        self.vault = self.services.vault
        self.sim.incremental_event_paging = self.rng.choice(INCREMENTAL_EVENT_PAGING)
        self.report.note(f"event increments longer than a page go on by: {self.sim.incremental_event_paging}")
        odd = ODD_VALUES if self.rng.random() < ODD_SCHEDULES else 0.0
        self.data = FeishuData(RandomSource(self.rng), odd=odd, max_depth=2)
        if odd:
            self.report.note("some values are what DynamoDB cannot hold as sent")
        self.oracle = Oracle(client, names["EventsTable"], ("calendar_key", "event_id"))
        self.kill_after_pages: dict[str, int] = {}
        self.kill_events_after_pages: dict[str, int] = {}
        self.kill_first_events_of: dict[str, str] = {}  # open_id → the calendar whose first event write dies
        self.event_traps: dict[str, list[Trap]] = {}
        self.bad_commits: list[str] = []
        self.reauth_allowed: Counter[str] = Counter()  # reauth causes injected (each may stop one user)
        self.consent_at_refresh: dict[str, bool] = {}  # open_id → revoke_previous: sign in again at its next refresh
        self.pings = _CallbackPings(self.services.pings, calls)
        self.open_ids: list[str] = []
        self.labels: dict[str, str] = {}  # calendar_id → a short name for the printed schedule
        self.exceptions: set[str] = set()  # event ids of the exceptions of recurring events made so far
        self.recurring: set[str] = set()  # those and their masters
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the machinery under test
    def _app(self, clock_offset: int = 0) -> FeishuApp:
        """The simulator's app as a sync's client talks to it: scaled waits, a short read timeout, and the
        sync's clock (which dates the tokens it is granted)."""
        return FeishuApp(
            FeishuCredentials(self.sim.app_id, self.sim.app_secret),
            retry=RetryPolicy(max_attempts=RETRY_ATTEMPTS, base_delay=0.2, max_delay=2.0, read_timeout=READ_TIMEOUT),
            sleep=lambda seconds: time.sleep(seconds / TIME_SCALE),
            clock=lambda: time.time() + clock_offset,
        )

    def _watch(self, client: FeishuClient, open_id: str, received: LastPages) -> None:
        """Make a sync's client record the sync tokens of the last pages it receives (so commits can be
        checked against them), spring the user's armed traps on event listings, and let the user sign in
        again around a refresh when that is armed."""
        list_calendars, list_events = client.list_calendars, client.list_events

        def recorded(*args: Any, **kwargs: Any) -> Page[Any]:
            page = list_calendars(*args, **kwargs)
            if not page.has_more and page.sync_token:
                received.calendars.add(page.sync_token)
            return page

        def recorded_events(access_token: str, calendar_id: str, **kwargs: Any) -> Page[Event]:
            self._spring_trap(open_id, calendar_id, kwargs)
            page = list_events(access_token, calendar_id, **kwargs)
            if not page.has_more and page.sync_token:
                received.events.setdefault(calendar_id, set()).add(page.sync_token)
            return page

        client.list_calendars = recorded  # type: ignore[method-assign]
        client.list_events = recorded_events  # type: ignore[method-assign]
        client.refresh_access_token = self._consenting_refresh(open_id, client.refresh_access_token)  # type: ignore[method-assign]

    def _consenting_refresh(self, open_id: str, refresh: Callable[..., TokenGrant]) -> Callable[..., TokenGrant]:
        """The client's refresh, around which the user signs in again when a consent is armed for it: just
        before (revoking the old refresh tokens, so this refresh is refused) or once Feishu answered it."""

        def refreshed(refresh_token: str, *, deadline: float) -> TokenGrant:
            with self._lock:
                revoke = self.consent_at_refresh.pop(open_id, None)
            if revoke:
                self._consent(open_id, revoke_previous=True)
            grant = refresh(refresh_token, deadline=deadline)
            if revoke is False:
                self._consent(open_id)
            return grant

        return refreshed

    def _spring_trap(self, open_id: str, calendar_id: str, request: dict[str, Any]) -> None:
        """Before an event-list request: the first armed trap of the user that matches it goes off."""
        with self._lock:
            traps = self.event_traps.get(open_id, [])
            trap = next((t for t in traps if t.trigger == "any" or request.get(t.trigger)), None)
            if trap is None:
                return
            traps.remove(trap)
            self.report.faults[trap.kind] += 1
        if trap.faults:
            self.sim.inject(events_path(calendar_id), *trap.faults)
        else:
            self.sim.expire_access_tokens(open_id)

    def _invocation(self, open_id: str, received: LastPages, clock_offset: int) -> Services:
        """The services as one sync invocation sees them: its client watched, its event writes behind one
        kill switch, its listing state behind the kill switches and the commit check."""
        kill = _EventKillSwitch(self, open_id)
        settings = self.settings
        client = self.clients.dynamodb
        tables = dataclasses.replace(
            self.tables,
            events=_ScheduleEvents(client, settings.events_table, self.tables.fenced, kill=kill),
            listings=_ScheduleListings(self, open_id, kill, received),
        )
        clock = lambda: time.time() + clock_offset  # noqa: E731
        services = composition.build(settings, self.clients, self._app(clock_offset), tables=tables, clock=clock)
        self._watch(services.feishu, open_id, received)
        return services

    def sync(self, open_id: str, clock_offset: int = 0, request_id: str = "") -> SyncResult:
        """One sync invocation (calendar list and events), with the schedule's kill switches and commit checks;
        its lease owner is made as the sync function makes it, from the invocation's request id."""
        with self.calls.acting_as("SyncFunction"):
            return self._sync(open_id, clock_offset, request_id)

    def _sync(self, open_id: str, clock_offset: int, request_id: str) -> SyncResult:
        engine = self._invocation(open_id, LastPages(), clock_offset).sync
        owner = lease_owner(request_id or uuid.uuid4().hex)
        result = engine.sync_user(open_id, owner=owner, deadline=time.monotonic() + 30, lease_seconds=LEASE_SECONDS)
        with self._lock:
            self.report.syncs[result.outcome] += 1
        return result

    # ------------------------------------------------------------------ the schedule
    def run(self) -> None:
        """Onboard, interleave changes, pings and faults, quiesce, resync, and check."""
        try:
            for n in range(self.rng.randint(1, 3)):
                self._onboard(f"ou_{self.report.seed}_{n}", self.rng.randint(1, 70))
            for _ in range(self.rng.randint(6, 16)):
                self._step()
            self.syncs.join()
            self._quiesce_and_check()
        finally:
            self.sim.stop()
            for name in self.table_names:  # DynamoDB Local slows down as it accumulates tables and items
                self.client.delete_table(TableName=name)

    def _onboard(self, open_id: str, calendars: int) -> None:
        rng = self.rng
        self.sim.add_user(open_id, open_id)
        primary = str(self.sim.calendars(open_id)[0]["calendar_id"])
        self.labels[primary] = f"{open_id}/primary"
        readable = [primary]
        unreadable: list[str] = []
        extra_readable = rng.choice([0, 0, 0, 1, 1, 2])
        for n in range(calendars - 1):
            cid = self._new_calendar(open_id, f"c{n}", readable=n < extra_readable, color=n)
            (readable if n < extra_readable else unreadable).append(cid)
        for cid in readable:
            self._add_events(open_id, cid, rng.choice([0, 1, 2, 5, 10, 20]))
        if rng.random() < 0.4:  # a recurring series with changed and cancelled occurrences
            self._add_series(open_id, rng.choice(readable))
        if rng.random() < 0.15:  # a calendar whose event listings page
            self._add_events(open_id, rng.choice(readable), rng.randint(PAGE_SIZE + 1, 2 * PAGE_SIZE + 10))
        for cid in unreadable[:2]:  # events the user cannot list: never mirrored
            self._add_events(open_id, cid, rng.randint(0, 5))
        self._store_consent(open_id, self.sim.issue_user_tokens(open_id))
        self.open_ids.append(open_id)
        events = sum(len(self.sim.events(open_id, cid)) for cid in readable)
        self.report.note(
            f"onboard {open_id} with {calendars} calendars ({len(readable)} readable, {events} events on them)"
        )

    def _step(self) -> None:
        steps: dict[str, tuple[int, Callable[[str], None]]] = {
            "change": (24, self._change),
            "ping": (20, self._ping),
            "duplicate_sync": (7, self._duplicate_sync),
            "fault": (16, self._fault),
            "expire_sync": (4, self._expire_sync),
            "expire_access": (4, self._expire_access),
            "kill": (3, self._kill),
            "invoke_fails": (3, self._invoke_fails),
            "pause": (5, self._pause),
            "event_change": (26, self._event_change),
            "event_ping": (12, self._event_ping),
            "event_fault": (18, self._event_fault),
            "access": (6, self._access),
            "event_kill": (4, self._event_kill),
            "recurring": (5, self._recurring),
            "master_delete": (3, self._master_delete),
            "doomed_calendar": (3, self._doomed_calendar),
            "twin_delivery": (3, self._twin_delivery),
            "refresh_fault": (5, self._refresh_fault),
            "scope_fault": (2, self._scope_fault),
            "second_consent": (3, self._second_consent),
        }
        open_id = self.rng.choice(self.open_ids)
        _, run = self.rng.choices(list(steps.values()), weights=[weight for weight, _ in steps.values()])[0]
        run(open_id)

    def _ping(self, open_id: str) -> None:
        copies = self.rng.choice([1, 1, 2, 3])  # duplicate and retried deliveries
        for _ in range(copies):
            self.pings.dispatch([open_id], "calendar_changed")
        self._act("calendar ping")
        self.report.note(f"ping {open_id} ×{copies}")

    def _duplicate_sync(self, open_id: str) -> None:
        self.syncs.start(open_id, "duplicate")
        self._act("extra concurrent sync")
        self.report.note(f"extra concurrent sync {open_id}")

    def _expire_sync(self, open_id: str) -> None:
        self.sim.expire_sync_tokens(open_id if self.rng.random() < 0.7 else None)
        self._count("190008")
        self.report.note(f"expire sync and page tokens, calendar list and events ({open_id})")

    def _expire_access(self, open_id: str) -> None:
        self.sim.expire_access_tokens(open_id)
        self._count("access token expired (99991677)")
        self.report.note(f"expire access token {open_id}")

    def _kill(self, open_id: str) -> None:
        pages = self.rng.randint(1, 2)
        self.kill_after_pages[open_id] = pages
        self._count("sync killed mid-listing")
        self.report.note(f"kill {open_id}'s next sync after {pages} page(s)")

    def _invoke_fails(self, open_id: str) -> None:
        self.syncs.fail_next += 1
        self._count("async invoke failed")
        self.report.note("next async invoke fails")

    # ------------------------------------------------------------------ tokens and consent
    def _store_consent(self, open_id: str, body: dict[str, Any]) -> None:
        """What the OAuth callback stores: the new pair, sealed."""
        now = int(time.time())
        grant = TokenGrant(body["access_token"], now + 7200, body["refresh_token"], now + 604800, body["scope"])
        with self.calls.acting_as("OAuthFunction"):
            self.tables.tokens.save_authorization(UserIdentity(open_id, open_id), self.vault.seal(open_id, grant), now)

    def _consent(self, open_id: str, *, revoke_previous: bool = False) -> None:
        """The user signs in again, as the OAuth callback handles it: new tokens stored, a sync started."""
        self._store_consent(open_id, self.sim.issue_user_tokens(open_id, revoke_previous=revoke_previous))
        self.pings.dispatch([open_id], "onboarded")

    def _twin_delivery(self, open_id: str) -> None:
        """Lambda runs one asynchronous sync event twice at once, with one request id; the access token has
        expired, so two copies holding the lease would present one refresh token twice."""
        self.sim.expire_access_tokens(open_id)
        request_id = uuid.uuid4().hex
        for _ in range(2):
            self.syncs.start(open_id, "twin", request_id)
        self._act("one async event run twice at once (same request id)")
        self.report.note(f"one sync event of {open_id} run twice at once, access token expired")

    def _refresh_fault(self, open_id: str) -> None:
        """A fault for the next refresh (the user's access token expires and a ping starts a sync): refused
        for good, answered but lost, or answered without a new refresh token."""
        rng = self.rng
        refusals = [
            (f"refresh refused ({code})", feishu_error(code, 400, "refresh token refused"), "refresh_token_refused")
            for code in (20026, 20037, 20064, 20073, 20074, 20002, rng.choice([20024, 20063, 20066, 20071]))
        ]
        lost = [
            ("refresh answer lost: connection closed", lost_reply(), "refresh_outcome_unknown"),
            ("refresh answer lost: read timeout", late_reply(READ_TIMEOUT + 0.2), "refresh_outcome_unknown"),
            ("refresh answer lost: gateway 504", gateway_timeout(), "refresh_outcome_unknown"),
        ]
        group = rng.choice([refusals, lost, [("refresh without a new refresh token", unrotated_refresh(), "")]])
        kind, fault, cause = rng.choice(group)
        self.sim.inject(TOKEN_PATH, fault)
        if cause:
            self.reauth_allowed[cause] += 1
        self.sim.expire_access_tokens(open_id)
        self.pings.dispatch([open_id], "calendar_changed")
        self._count(kind)
        self.report.note(f"fault: {kind} (next refresh; {open_id}'s access token expired, pinged)")

    def _scope_fault(self, open_id: str) -> None:
        """A missing scope: the user's grant loses the calendar scope, or one call is answered 99991672/76/79."""
        rng = self.rng
        if rng.random() < 0.5:
            self.sim.withdraw_scope(open_id, CALENDAR_SCOPES[0])
            kind = "calendar scope withdrawn from a grant (99991679)"
        else:
            code = rng.choice([99991679, 99991672, 99991676])
            path = rng.choice([CALENDARS_PATH, events_path(self._pick_calendar(open_id, 1.0))])
            self.sim.inject(path, scope_missing(code, (rng.choice(CALENDAR_SCOPES),)))
            kind = f"missing scope ({code}) with permission_violations"
        self.reauth_allowed["scope_missing"] += 1
        self.pings.dispatch([open_id], "calendar_changed")
        self._count(kind)
        self.report.note(f"fault: {kind}, {open_id} pinged")

    def _second_consent(self, open_id: str) -> None:
        """The user signs in again while a sync runs: around its refresh (just before it, revoking the old
        refresh tokens; or once Feishu answered it, before it is stored), or at any moment."""
        rng = self.rng
        when = rng.choice(["before its refresh", "after its refresh", "at any moment"])
        if when == "at any moment":
            self.pings.dispatch([open_id], "calendar_changed")
            time.sleep(rng.uniform(0, 0.05))
            self._consent(open_id, revoke_previous=rng.random() < 0.5)
        else:
            with self._lock:
                self.consent_at_refresh[open_id] = when == "before its refresh"
            self.sim.expire_access_tokens(open_id)
            self.pings.dispatch([open_id], "calendar_changed")
        self._act(f"signed in again during a sync, {when}")
        self.report.note(f"{open_id} signs in again during a sync, {when}")

    def _pause(self, open_id: str) -> None:
        self._act("pause")
        time.sleep(self.rng.uniform(0, 0.05))

    # ------------------------------------------------------------------ calendars
    def _new_calendar(self, open_id: str, summary: str, *, readable: bool, **extra: Any) -> str:
        """A calendar whose events the user can list (``readable``) or cannot (free/busy only, third party)."""
        rng = self.rng
        kind: dict[str, Any]
        if readable:
            kind = {"role": rng.choice(["owner", "writer", "reader"]), "type": rng.choice(["shared", "resource"])}
        else:
            kind = rng.choice(
                [
                    {"role": "free_busy_reader"},
                    {"role": "free_busy_reader", "type": "resource"},
                    {"type": "google", "is_third_party": True},
                    {"type": "exchange", "is_third_party": True},
                ]
            )
        if rng.random() < SDK_SHAPED:  # the SDK model's other fields: descriptions, aliases, colours of any kind
            sdk = self.data.calendar()
            extra = {name: sdk[name] for name in ("description", "summary_alias", "color") if name in sdk} | extra
        calendar_id = self.sim.create_calendar(open_id, summary=summary, **kind, **extra)
        self.labels[calendar_id] = f"{open_id}/{summary}"
        return calendar_id

    def _change(self, open_id: str) -> None:
        rng = self.rng
        live = [c["calendar_id"] for c in self.sim.calendars(open_id) if c["type"] != "primary"]
        kind = rng.choice(["create", "update", "delete"] if live else ["create"])
        touched: list[str] = []
        for _ in range(rng.choice([1, 1, 2, 5, 20])):
            live = [c["calendar_id"] for c in self.sim.calendars(open_id) if c["type"] != "primary"]
            if kind == "create" or not live:
                readable = rng.random() < 0.2
                calendar_id = self._new_calendar(open_id, f"new {rng.random():.6f}", readable=readable)
                if readable:
                    self._add_events(open_id, calendar_id, rng.choice([0, 1, 3, 10]))
            elif kind == "update":
                calendar_id = rng.choice(live)
                self.sim.update_calendar(
                    open_id, calendar_id, summary=f"upd {rng.random():.6f}", color=rng.randint(-9, 9)
                )
            else:  # half the time a calendar that has events
                with_events = [cid for cid in live if self.sim.events(open_id, cid)]
                calendar_id = rng.choice(with_events if with_events and rng.random() < 0.5 else live)
                self.sim.delete_calendar(open_id, calendar_id)
            touched.append(f"{self.label(calendar_id)} ({len(self.sim.events(open_id, calendar_id))} events)")
        self._act(f"calendar {kind}", len(touched))
        self.report.note(f"{kind} calendars of {open_id}: {', '.join(touched)}")

    def _access(self, open_id: str) -> None:
        """The user loses (free/busy only) or gains (reader, writer) access to a calendar's events."""
        rng = self.rng
        candidates = [
            c for c in self.sim.calendars(open_id) if c["type"] in EVENT_SYNCABLE_TYPES and c["type"] != "primary"
        ]
        readable = [c for c in candidates if is_readable(c)]
        if not candidates:
            self.report.note(f"no calendar of {open_id} to change access to")
            return
        revoke = bool(readable) and (len(readable) == len(candidates) or rng.random() < 0.6)
        calendar = rng.choice(readable if revoke else [c for c in candidates if not is_readable(c)])
        calendar_id = calendar["calendar_id"]
        if revoke:
            self.sim.update_calendar(open_id, calendar_id, role="free_busy_reader")
            kind = "revoked"
        else:
            self.sim.update_calendar(open_id, calendar_id, role=rng.choice(["reader", "writer"]))
            kind = "granted"
        pushed = rng.random() < 0.7  # Feishu pushes the calendar change; otherwise the resync finds it
        if pushed:
            self.pings.dispatch([open_id], "calendar_changed")
        self._act(f"calendar access {kind}")
        events = len(self.sim.events(open_id, calendar_id))
        self.report.note(f"access {kind}: {self.label(calendar_id)} ({events} events){', pushed' if pushed else ''}")

    # ------------------------------------------------------------------ events
    def _add_events(self, open_id: str, calendar_id: str, count: int) -> None:
        for _ in range(count):
            self.sim.create_event(open_id, calendar_id, **self._event_fields())

    def _times(self) -> dict[str, Any]:
        rng = self.rng
        if rng.random() < 0.2:  # an all-day event
            day = datetime.date(2026, 1, 1) + datetime.timedelta(days=rng.randint(0, 365))
            return {
                "start_time": {"date": day.isoformat()},
                "end_time": {"date": (day + datetime.timedelta(days=rng.randint(1, 3))).isoformat()},
            }
        start = 1_767_225_600 + rng.randint(0, 365 * 24) * 1800
        timezone = rng.choice(["Asia/Shanghai", "UTC", "America/Los_Angeles"])
        return {
            "start_time": {"timestamp": str(start), "timezone": timezone},
            "end_time": {"timestamp": str(start + rng.choice([900, 1800, 3600, 5400])), "timezone": timezone},
        }

    def _location(self) -> dict[str, Any]:
        rng = self.rng
        location = {"name": rng.choice(["会议室 A", "Room 42", "Café", ""])}
        if rng.random() < 0.5:
            location["address"] = f"{rng.randint(1, 999)} 中山路"
        return location

    def _sdk_event(self) -> dict[str, Any]:
        """An event's fields drawn from the SDK's models (the simulator gives it its id)."""
        start = 1_767_225_600 + self.rng.randint(0, 365 * 24) * 1800
        fields = self.data.event("unused_0", start)
        del fields["event_id"]
        return fields

    def _event_fields(self) -> dict[str, Any]:
        rng = self.rng
        if rng.random() < SDK_SHAPED:
            self.report.data["events drawn from the SDK's models"] += 1
            return self._sdk_event()
        fields: dict[str, Any] = {"summary": f"{rng.choice(['周会', '1:1', 'Review'])} {rng.random():.6f}"}
        fields |= self._times()
        if rng.random() < 0.5:
            fields["location"] = self._location()
        if rng.random() < 0.3:
            fields["description"] = f"agenda {rng.random():.6f}"
        if rng.random() < 0.2:
            fields["recurrence"] = "FREQ=WEEKLY;INTERVAL=1;COUNT=4"
        return fields

    def _event_update(self) -> dict[str, Any]:
        """One to three changes of an event's fields, nested ones (times, location) included."""
        rng = self.rng
        if rng.random() < SDK_SHAPED:  # fields of a freshly drawn SDK-shaped event, its recurring shape aside
            drawn = self._sdk_event()
            self.report.data["event changes drawn from the SDK's models"] += 1
            names = [n for n in drawn if n not in ("status", "recurrence", "is_exception", "recurring_event_id")]
            return {name: drawn[name] for name in rng.sample(names, min(len(names), rng.randint(1, 4)))}
        changes: dict[str, Any] = {}
        for name in rng.sample(
            ["summary", "description", "times", "location", "color", "visibility", "free_busy_status", "recurrence"],
            rng.randint(1, 3),
        ):
            if name == "times":
                changes |= self._times()
            elif name == "location":
                changes["location"] = self._location()
            elif name == "color":
                changes["color"] = rng.randint(-16777216, -1)
            elif name == "visibility":
                changes["visibility"] = rng.choice(["default", "public", "private"])
            elif name == "free_busy_status":
                changes["free_busy_status"] = rng.choice(["busy", "free"])
            elif name == "recurrence":
                changes["recurrence"] = rng.choice(["", "FREQ=DAILY;COUNT=3", "FREQ=WEEKLY;BYDAY=MO"])
            else:
                changes[name] = f"{name} {rng.random():.6f}"
        return changes

    def _pick_calendar(self, open_id: str, readable_share: float = 0.85) -> str:
        """A live calendar of the user: mostly one whose events are mirrored (the primary always is)."""
        calendars = self.sim.calendars(open_id)
        readable: list[str] = [c["calendar_id"] for c in calendars if is_readable(c)]
        others: list[str] = [c["calendar_id"] for c in calendars if not is_readable(c)]
        return self.rng.choice(readable if not others or self.rng.random() < readable_share else others)

    def _push(self, open_id: str, calendar_id: str, copies: int = 1) -> None:
        """Feishu's calendar.calendar.event.changed_v4 for one calendar (``copies``: retried deliveries)."""
        for _ in range(copies):
            self.pings.dispatch([open_id], "event_changed", calendar_id=calendar_id)

    def _event_change(self, open_id: str) -> None:
        rng = self.rng
        calendar_id = self._pick_calendar(open_id)
        kind = rng.choice(["create", "update", "delete"] if self.sim.events(open_id, calendar_id) else ["create"])
        changed = 0
        for _ in range(rng.choice([1, 1, 2, 5, 20])):
            events = [e["event_id"] for e in self.sim.events(open_id, calendar_id)]
            if kind == "create" or not events:
                self.sim.create_event(open_id, calendar_id, **self._event_fields())
            elif kind == "update":
                event_id = rng.choice(events)
                changes = self._event_update()
                if event_id in self.recurring:  # occurrences have none of their own; masters keep theirs
                    changes.pop("recurrence", None)
                self.sim.update_event(open_id, calendar_id, event_id, **changes)
            else:  # an exception is cancelled (it stays, status "cancelled"); a master takes its exceptions
                event_id = rng.choice(events)
                self.sim.delete_event(open_id, calendar_id, event_id, exceptions_first=rng.random() < 0.5)
                if event_id in self.exceptions:
                    self._act("occurrence cancelled")
            changed += 1
        pushed = rng.random() < 0.7  # Feishu pushes the change; otherwise a later listing finds it
        if pushed:
            self._push(open_id, calendar_id)
        self._act(f"event {kind}", changed)
        self.report.note(
            f"{kind} {changed} event(s) of {self.label(calendar_id)}"
            f" (now {len(self.sim.events(open_id, calendar_id))}){', pushed' if pushed else ''}"
        )

    def _recurring(self, open_id: str) -> None:
        """A recurring event with occurrences moved, changed or cancelled (pushed, mostly)."""
        calendar_id = self._pick_calendar(open_id)
        kinds = self._add_series(open_id, calendar_id)
        pushed = self.rng.random() < 0.7
        if pushed:
            self._push(open_id, calendar_id)
        self._act("recurring event with exceptions")
        self._act("occurrence cancelled", kinds.count("cancelled"))
        self.report.note(
            f"recurring event on {self.label(calendar_id)}: {', '.join(kinds)}{', pushed' if pushed else ''}"
        )

    def _add_series(self, open_id: str, calendar_id: str) -> list[str]:
        """A recurring master (SDK-shaped or simple) and 1–3 exceptions; returns how each occurrence differs."""
        rng = self.rng
        fields = self._event_fields()
        fields.update(recurrence=rng.choice(RRULES), is_exception=False, recurring_event_id="")
        if fields.get("status") not in ("confirmed", "tentative"):
            fields["status"] = "confirmed"
        master = self.sim.create_event(open_id, calendar_id, **fields)
        self.recurring.add(master)
        kinds = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(["moved", "changed", "cancelled"])
            changes = self._event_update() if kind == "changed" else {}
            changes.pop("recurrence", None)
            exception = self.sim.create_exception(
                open_id, calendar_id, master, cancelled=kind == "cancelled", **changes
            )
            self.exceptions.add(exception)
            self.recurring.add(exception)
            kinds.append(kind)
        return kinds

    def _master_delete(self, open_id: str) -> None:
        """A recurring event's master is deleted: its exceptions go with it (listed before or after it)."""
        rng = self.rng
        masters: list[tuple[str, str]] = []
        for calendar in self.sim.calendars(open_id):
            events = self.sim.events(open_id, calendar["calendar_id"])
            live = {e["event_id"] for e in events}
            found = {e["recurring_event_id"] for e in events if e["event_id"] in self.exceptions} & live
            masters += [(calendar["calendar_id"], master) for master in sorted(found)]
        if not masters:
            self.report.note(f"no recurring event with exceptions of {open_id} to delete")
            return
        calendar_id, master = rng.choice(masters)
        settled = rng.random() < 0.7
        if settled:  # mostly a series the mirror holds by now: its push synced before the deletion
            self._push(open_id, calendar_id)
            self.syncs.join()
        first = rng.random() < 0.5
        self.sim.delete_event(open_id, calendar_id, master, exceptions_first=first)
        pushed = rng.random() < 0.7
        if pushed:
            self._push(open_id, calendar_id)
        self._act("recurring master deleted")
        self.report.note(
            f"delete a recurring master of {self.label(calendar_id)}{' (synced first)' if settled else ''}"
            f" ({'exceptions' if first else 'master'} listed first){', pushed' if pushed else ''}"
        )

    def _event_ping(self, open_id: str) -> None:
        """A push for a calendar's events: mostly a readable one, sometimes one that is not or is gone."""
        rng = self.rng
        gone = [cid for cid, label in self.labels.items() if label.startswith(f"{open_id}/")]
        live = {c["calendar_id"] for c in self.sim.calendars(open_id)}
        gone = [cid for cid in gone if cid not in live]
        calendar_id = rng.choice(gone) if gone and rng.random() < 0.1 else self._pick_calendar(open_id, 0.8)
        copies = rng.choice([1, 1, 2, 3])
        self._push(open_id, calendar_id, copies)
        self._act("event ping")
        self.report.note(f"event ping {self.label(calendar_id)} ×{copies}")

    def _event_fault(self, open_id: str) -> None:
        """Arm a trap for the user's next matching event-list request, and push an event change so one comes."""
        rng = self.rng
        trap = rng.choice(
            [
                Trap("event 429 with reset", "any", (rate_limited(rng.randint(1, 3)),)),
                Trap("event 5xx", "any", (http_error(rng.choice([500, 502, 503])),)),
                Trap("event 5xx with code 190003", "any", (http_error(500, code=190003),)),
                Trap("event 5xx until the retries run out", "any", (http_error(503),) * RETRY_ATTEMPTS),
                Trap("event slow answer / timeout", "any", (delay(rng.choice([0.05, 0.7])),)),
                Trap("event dropped connection", "any", (drop(),)),
                Trap("event empty page with has_more", "any", (empty_page(),)),
                Trap("event 190008 on the sync token", "sync_token", (feishu_error(190008, 400, EXPIRED),)),
                Trap("event 190008 on a page token", "page_token", (feishu_error(190008, 400, EXPIRED),)),
                Trap("event 190002 (listing refused)", "any", (feishu_error(190002, 400, "invalid parameters"),)),
                Trap("event 191002 (no access)", "any", (feishu_error(191002, 403, "no calendar access_role"),)),
                Trap("event 191000 (calendar not found)", "any", (feishu_error(191000, 404, "calendar not found"),)),
                Trap("event access token expired mid-listing (99991677)", "any"),
            ]
        )
        self.event_traps.setdefault(open_id, []).append(trap)
        calendar_id = self._pick_calendar(open_id, 1.0)
        grown = ""
        if trap.trigger == "page_token":  # make sure some listing pages: more changes than a page holds
            before = len(self.sim.events(open_id, calendar_id))
            if before <= PAGE_SIZE:
                self._add_events(open_id, calendar_id, PAGE_SIZE + 1 - before + rng.randint(0, 10))
                grown = f", {self.label(calendar_id)} grown to {len(self.sim.events(open_id, calendar_id))} events"
        pushed = rng.random() < 0.7 or bool(grown)
        if pushed:
            self._push(open_id, calendar_id)
        self.report.note(
            f"trap: {trap.kind} on {open_id}'s next event listing"
            + (f" ({trap.trigger})" if trap.trigger != "any" else "")
            + grown
            + (f", pushed {self.label(calendar_id)}" if pushed else "")
        )

    def _event_kill(self, open_id: str) -> None:
        """The user's next sync that writes events dies at its n-th event write (a page, a checkpoint, a commit)."""
        pages = self.rng.randint(1, 3)
        self.kill_events_after_pages[open_id] = pages
        calendar_id = self._pick_calendar(open_id, 1.0)
        self._push(open_id, calendar_id)
        self.report.note(f"kill {open_id}'s next event listing at its page {pages}; pushed {self.label(calendar_id)}")

    def _doomed_calendar(self, open_id: str) -> None:
        """A new readable calendar whose first event listing dies after writing its events (before its
        listing is checkpointed or committed); then the calendar is deleted or its events become unreadable."""
        rng = self.rng
        calendar_id = self._new_calendar(open_id, f"doomed {rng.random():.6f}", readable=True)
        self._add_events(open_id, calendar_id, rng.randint(1, 5))
        with self._lock:
            self.kill_first_events_of[open_id] = calendar_id
        self.pings.dispatch([open_id], "calendar_changed")
        self.syncs.join()
        if rng.random() < 0.5:
            self.sim.delete_calendar(open_id, calendar_id)
            kind = "deleted"
        else:
            self.sim.update_calendar(open_id, calendar_id, role="free_busy_reader")
            kind = "unreadable"
        pushed = rng.random() < 0.7
        if pushed:
            self.pings.dispatch([open_id], "calendar_changed")
        self._act(f"doomed calendar {kind}")
        self.report.note(
            f"doomed calendar {self.label(calendar_id)}: first event write killed, then {kind}"
            + (", pushed" if pushed else "")
        )

    def _fault(self, open_id: str) -> None:
        """A fault for the next request under the calendar API: the calendar list, an event list or a subscription."""
        rng = self.rng
        kind, path, fault = rng.choice(
            [
                ("429 with reset", CALENDARS_PATH, rate_limited(rng.randint(1, 3))),
                ("5xx", CALENDARS_PATH, http_error(rng.choice([500, 502, 503]))),
                ("5xx with code 190003", CALENDARS_PATH, http_error(500, code=190003)),
                ("slow answer / timeout", CALENDARS_PATH, delay(rng.choice([0.05, 0.7]))),
                ("dropped connection", CALENDARS_PATH, drop()),
                ("empty page with has_more", CALENDARS_PATH, empty_page()),
                ("190008 on a page", CALENDARS_PATH, feishu_error(190008, 400, EXPIRED)),
                ("token endpoint 5xx", TOKEN_PATH, http_error(503)),
                ("token endpoint 20050", TOKEN_PATH, feishu_error(20050, 500, "server error")),
            ]
        )
        self.sim.inject(path, fault)
        self._count(kind)
        self.report.note(f"fault: {kind}")

    def _count(self, kind: str) -> None:
        with self._lock:
            self.report.faults[kind] += 1

    def _act(self, kind: str, times: int = 1) -> None:
        self.report.actions[kind] += times

    def label(self, calendar_id: str) -> str:
        """A calendar's short name in the printed schedule."""
        return self.labels.get(calendar_id, calendar_id[:20])

    # ------------------------------------------------------------------ convergence
    def _quiesce_and_check(self) -> None:
        self.sim.clear_faults()
        self.kill_after_pages.clear()
        self.kill_events_after_pages.clear()
        self.kill_first_events_of.clear()
        self.event_traps.clear()
        self.consent_at_refresh.clear()
        self.syncs.fail_next = 0
        assert not self.syncs.errors, f"a sync raised {self.syncs.errors[0]!r}\n{self.report}"
        self._scheduled_resync(LATER, reauth_allowed=True)
        self._sign_in_again()
        if self._held():
            self.report.note("held mass deletion: the confirming resync")
            self._scheduled_resync(LATER + self.settings.mass_delete_confirm_seconds + 1)
        stored_events = self.event_items()
        self._tally_final(stored_events)
        for open_id in self.open_ids:
            truth = {c["calendar_id"]: c for c in self.sim.calendars(open_id)}
            mirror = self.live(open_id)
            assert set(mirror) == set(truth), (
                f"{open_id}: mirror {sorted(mirror)} != Feishu {sorted(truth)}\n{self.report}"
            )
            problems = [
                f"{self.label(cid)}: {problem}"
                for cid in sorted(truth)
                for problem in self.oracle.problems(truth[cid], mirror[cid], CALENDAR_FIELDS)
            ]
            assert not problems, f"{open_id}: calendars differ from Feishu: {problems}\n{self.report}"
            assert self.user(open_id)["status"] == "active", f"{open_id} needs reauth\n{self.report}"
            latest = self.sim.latest_grant(open_id)
            stored = self.tables.schedule.get(open_id)
            assert stored is not None
            refresh_token = self.vault.open(open_id, stored.access_token, stored.refresh_token).refresh_token
            assert self.sim.grant_of(refresh_token) == latest, (
                f"{open_id} holds tokens of an older consent than {latest}\n{self.report}"
            )
            self._check_events(open_id, stored_events)
        assert self.sim.refresh_token_reuse_count == 0, f"a refresh token was presented twice\n{self.report}"
        assert not self.bad_commits, f"sync_token committed without its last page: {self.bad_commits}\n{self.report}"
        for api, (per_second, per_minute) in self.sim.peak_rates_by_api().items():
            assert per_second <= LIMIT_PER_SECOND, f"{per_second} requests to {api} in 1 s\n{self.report}"
            assert per_minute <= LIMIT_PER_MINUTE, f"{per_minute} requests to {api} in 60 s\n{self.report}"
        refused = [r.api for r in self.sim.requests_log if r.fault == "rate_limit"]
        assert not refused, (
            f"Feishu refused requests for their rate (the gate let them through): {refused}\n{self.report}"
        )

    def _tally_final(self, stored: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> None:
        """Count what the final mirror holds of the data that matters here (for the suite's figures)."""
        data = self.report.data
        calendars = [item for open_id in self.open_ids for item in self.live(open_id).values()]
        events = [item for items in stored.values() for item in items.values()]
        for item in calendars + [e for e in events if "deleted_at" not in e]:
            if "mirror_reduced" in item:
                data["items stored reduced, in the final mirror"] += 1
                for reason in item["mirror_reduced"].values():
                    data[f"fields dropped as {reason}, in the final mirror"] += 1
        for item in events:
            exception = item.get("is_exception") is True and bool(item.get("recurring_event_id"))
            if exception and "deleted_at" not in item and item.get("status") == "cancelled":
                data["cancelled occurrences, live in the final mirror"] += 1
            elif exception and "deleted_at" in item:
                data["exceptions tombstoned, in the final mirror"] += 1

    def _check_events(self, open_id: str, stored: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> None:
        """Readable calendars: live events equal Feishu's; every other calendar's events are tombstones."""
        readable = {c["calendar_id"] for c in self.sim.calendars(open_id) if is_readable(c)}
        for calendar_id in sorted(readable):
            truth = {e["event_id"]: e for e in self.sim.events(open_id, calendar_id)}
            items = stored.get((open_id, calendar_id), {})
            live = {eid: item for eid, item in items.items() if "deleted_at" not in item}
            problems = [
                f"{eid}: {problem}"
                for eid in sorted(truth.keys() & live.keys())
                for problem in self.oracle.problems(truth[eid], live[eid], EVENT_FIELDS)
            ]
            assert live.keys() == truth.keys(), (
                f"{open_id} {self.label(calendar_id)}: events differ from Feishu: {difference(live, truth)}\n{self.report}"
            )
            assert not problems, (
                f"{open_id} {self.label(calendar_id)}: event fields differ from Feishu: {problems[:5]}\n{self.report}"
            )
            orphans = sorted(
                eid
                for eid, item in live.items()
                if item.get("is_exception") is True
                and item.get("recurring_event_id")
                and item["recurring_event_id"] not in live
            )
            assert not orphans, (
                f"{open_id} {self.label(calendar_id)}: live exceptions without their live master: {orphans}\n{self.report}"
            )
        for (owner, calendar_id), items in sorted(stored.items()):
            if owner != open_id or calendar_id in readable:
                continue
            live_ids = [eid for eid, item in items.items() if "deleted_at" not in item]
            assert not live_ids, (
                f"{open_id} {self.label(calendar_id)}: {len(live_ids)} live event(s) of a calendar that is gone or"
                f" unreadable\n{self.report}"
            )
        listings = self.tables.listings.event_listings(open_id)
        assert set(listings) == readable, (
            f"{open_id}: event listings of {sorted(map(self.label, listings))}"
            f" != readable calendars {sorted(map(self.label, readable))}\n{self.report}"
        )
        unfinished = sorted(
            self.label(cid)
            for cid, listing in listings.items()
            if listing.state.checkpoint or not listing.state.sync_token
        )
        assert not unfinished, f"{open_id}: event listings left unfinished: {unfinished}\n{self.report}"
        dirty = sorted(map(self.label, self.user(open_id).get("dirty_calendars") or ()))
        assert not dirty, f"{open_id}: calendars left marked dirty: {dirty}\n{self.report}"

    def _held(self) -> bool:
        """Whether a mass deletion is held back, of calendars or of a calendar's events."""
        return any(
            "held_sweep" in self.user(o)
            or any(listing.state.held_sweep for listing in self.tables.listings.event_listings(o).values())
            for o in self.open_ids
        )

    def _scheduled_resync(self, offset: int, *, reauth_allowed: bool = False) -> None:
        started: list[str] = []

        class Collect:
            def invoke(self, open_id: str, reason: str, *, delivery_id: str = "", claimed_at: int = 0) -> None:
                started.append(open_id)

        with self.calls.acting_as("ResyncFunction"):
            clients = GivenClients(self.clients.dynamodb, Collect())
            composition.build(self.settings, clients, clock=lambda: time.time() + offset).resync.sweep()
        for open_id in started:
            result = self.sync(open_id, clock_offset=offset)
            expected = ("synced", "reauth_required") if reauth_allowed else ("synced",)
            assert result.outcome in expected, f"resync of {open_id}: {result}\n{self.report}"

    def _sign_in_again(self) -> None:
        """Users asked to authorise again were asked for a cause the schedule injected (else they are locked
        out), with the missing scope named when it is one; they sign in again and the next resync syncs them."""
        waiting = {o: self.user(o) for o in self.open_ids if self.user(o)["status"] == REAUTH_REQUIRED}
        causes = Counter(str(user.get("reauth_cause")) for user in waiting.values())
        for cause, users in causes.items():
            assert users <= self.reauth_allowed[cause], (
                f"{users} user(s) locked out for {cause} (injected {self.reauth_allowed[cause]})\n{self.report}"
            )
        for open_id, user in waiting.items():
            cause = user["reauth_cause"]
            assert cause != "scope_missing" or user.get("missing_scope"), f"{open_id}: no scope named\n{self.report}"
            self.report.note(f"{open_id} signs in again ({cause})")
            self._act("signed in again after reauth_required")
            self._store_consent(open_id, self.sim.issue_user_tokens(open_id))
        if waiting:
            self._scheduled_resync(LATER)

    def user(self, open_id: str) -> dict[str, Any]:
        """The user's item."""
        found = self.tables.users.get_plain(open_id)
        assert found is not None
        return found

    def live(self, open_id: str) -> dict[str, dict[str, Any]]:
        """The user's live calendar items."""
        items = self.client.query(
            TableName=self.settings.calendars_table,
            KeyConditionExpression="open_id = :o",
            ExpressionAttributeValues=attribute_values({":o": open_id}),
            ConsistentRead=True,
        )["Items"]
        return {i["calendar_id"]: i for i in map(plain, items) if "deleted_at" not in i}

    def event_items(self) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """Every event item of the schedule's table (tombstones included), by (open_id, calendar_id), then event_id."""
        found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        pages = self.client.get_paginator("scan").paginate(TableName=self.settings.events_table, ConsistentRead=True)
        for page in pages:
            for item in map(plain, page["Items"]):
                found.setdefault((item["open_id"], item["calendar_id"]), {})[item["event_id"]] = item
        return found


class _EventKillSwitch:
    """Kills one sync invocation at its n-th event write: a page of events (or tombstones), a listing
    checkpoint, or just before a listing commit — with what came before already in the mirror.

    It is armed by the sync's first event write (so only a sync that holds the lease and writes events
    takes the user's pending kill); a page written before its listing's first checkpoint or commit is
    the window where a new calendar's events exist and its listing has not been recorded yet.
    """

    def __init__(self, schedule: Schedule, open_id: str) -> None:
        self._schedule, self._open_id = schedule, open_id
        self._writes = 0
        self._kill_after: int | None = None
        self._armed = False

    def after_write(self, where: str, calendar_id: str = "") -> None:
        """Count one event write (of ``calendar_id``'s events, for a page); die here if it is the one."""
        schedule = self._schedule
        with schedule._lock:
            doomed = calendar_id and schedule.kill_first_events_of.get(self._open_id) == calendar_id
            if doomed:
                del schedule.kill_first_events_of[self._open_id]
        if doomed:
            schedule._count("event listing killed after writing a new calendar's first page")
            raise LambdaKilled
        if not self._armed:
            self._armed = True
            self._kill_after = self._schedule.kill_events_after_pages.pop(self._open_id, None)
        self._writes += 1
        if self._kill_after is not None and self._writes == self._kill_after:
            self._schedule._count(f"event listing killed {where}")
            raise LambdaKilled


class _ScheduleEvents(EventStore):
    """The events store as one sync invocation sees it: writes go through the kill switch."""

    def __init__(self, client: DynamoDBClient, table: str, fenced: FencedWrites, *, kill: _EventKillSwitch) -> None:
        super().__init__(client, table, fenced)
        self._kill = kill

    def apply(
        self,
        fence: Fence,
        now: int,
        collection: CollectionId,
        *,
        upserts: Sequence[Event] = (),
        deletions: Sequence[Event] = (),
    ) -> int:
        """Write, then die here if this is the write the sync is to be killed at."""
        written = super().apply(fence, now, collection, upserts=upserts, deletions=deletions)
        self._kill.after_write("after writing a page of events", collection.calendar_id or "")
        return written


class _ScheduleListings(ListingStates):
    """The listing state as one sync invocation sees it: the calendar list's kill switch (after some pages,
    or before its commit), the events' kill switch, and the check of every committed token."""

    def __init__(self, schedule: Schedule, open_id: str, kill: _EventKillSwitch, received: LastPages) -> None:
        base = schedule.tables.listings
        super().__init__(schedule.clients.dynamodb, schedule.tables.fenced, base.table_name)
        self._schedule, self._kill, self._received = schedule, kill, received
        self._pages = 0
        self._kill_after = schedule.kill_after_pages.pop(open_id, None)

    def save_checkpoint(self, fence: Fence, now: int, collection: CollectionId, checkpoint: Checkpoint) -> bool:
        """Checkpoint, then die here if this is the write the sync is to be killed at."""
        kept = super().save_checkpoint(fence, now, collection, checkpoint)
        if collection.is_calendar_list:
            self._pages += 1
            if self._kill_after is not None and self._pages >= self._kill_after:
                raise LambdaKilled
        else:
            self._kill.after_write("after a checkpointed page")
        return kept

    def commit(self, fence: Fence, now: int, collection: CollectionId, outcome: ListingOutcome) -> None:
        """Only a token this invocation received on a last page of the same collection may be committed."""
        calendar_id, sync_token = collection.calendar_id, outcome.sync_token
        if calendar_id is None:
            if sync_token and sync_token not in self._received.calendars:
                self._schedule.bad_commits.append(sync_token)
            if self._kill_after is not None:
                raise LambdaKilled  # killed before the commit: the listing must resume or restart later
        else:
            if sync_token and sync_token not in self._received.events.get(calendar_id, set()):
                self._schedule.bad_commits.append(f"events of {self._schedule.label(calendar_id)}: {sync_token}")
            self._kill.after_write("before its commit")  # the listing's pages are written: it must resume or restart
        super().commit(fence, now, collection, outcome)
