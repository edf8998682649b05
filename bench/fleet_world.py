"""A deployment of the mirror in virtual time, for the fleet benchmark: the real engine on in-memory tables.

Built by the composition root (``composition.build``) as the functions build it, with these in place of
AWS and Feishu:

- the users, listings, calendars and events tables: the in-memory fakes of ``tests.fakes`` (their
  conditional semantics are checked against DynamoDB Local by ``tests/integration/test_fakes_match_dynamodb``);
- the rate gate's table: ``tests.fake_gate_table`` under the real ``DynamoRateGate`` (each API its budget);
- Feishu: the simulator (``local.feishu_sim``) answered in-process through the real ``FeishuClient``, with
  Feishu's answer times (100–300 ms) and its own limits per API (50/s and 1,000/min) on the virtual clock;
- Lambda: ``local.lambda_model``: the sync function's reserved concurrency, throttled asynchronous events
  retried with backoff, its 300 s timeout and cold starts; the resync function on its schedule.

Everything runs on ``local.virtual_time``: an hour of the fleet takes the CPU its code needs. The sync
handler does what ``functions/sync/app.py`` does (its deadline and lease margins), the resync handler what
``functions/resync/app.py`` does, and a push does what the callback does after its checks (``pings``).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from bench.population import Population, UserSpec
from feishu_mirror import composition
from feishu_mirror.composition import FeishuApp, GivenClients, Tables
from feishu_mirror.config import FeishuCredentials, Settings
from feishu_mirror.models import Calendar, Event, SyncResult, TokenGrant, UserIdentity
from feishu_mirror.observability import logger, metrics
from feishu_mirror.sync import lease_owner
from local.feishu_sim import FeishuSimulator
from local.lambda_model import FunctionConfig, LambdaContext, LambdaFunction
from local.template import _Loader as TemplateLoader
from local.virtual_time import VirtualTime
from tests.fake_gate_table import FakeGateTable
from tests.fakes import FakeDataKeys, FakeListings, FakeMirror, FakeUsers

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

    from feishu_mirror.composition import Services
    from feishu_mirror.concurrency import Concurrency
    from feishu_mirror.invoker import SyncInvoker

FEISHU_LATENCY = (0.1, 0.3)  # seconds per answer, as Feishu's from a nearby AWS region
FEISHU_PER_SECOND = 50
FEISHU_PER_MINUTE = 1000  # per API, per app, per tenant
ROOT = Path(__file__).resolve().parent.parent
SAFETY_SECONDS = 10  # functions/sync/app.py: left for the final writes after the last Feishu call
LEASE_MARGIN_SECONDS = 30  # functions/sync/app.py: the lease outlives the invocation's timeout by this much
CALLBACK_SECONDS = 0.05  # the callback's checks and its conditional write, before it invokes the sync


@contextlib.contextmanager
def quiet_powertools() -> Iterator[None]:
    """Powertools prints metrics (every 100 data points) and logs to stdout: keep them off the table."""
    level = logger.log_level
    logger.setLevel("ERROR")
    metrics.namespace = metrics.namespace or "FeishuCalendarMirrorFleet"  # flushed every 100 points
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        logger.setLevel(level)
        metrics.clear_metrics()


def template_default(parameter: str) -> Any:
    """A parameter's default in ``template.yaml`` (what a deployment gets unless it says otherwise)."""
    raw = yaml.load((ROOT / "template.yaml").read_text(), Loader=TemplateLoader)  # noqa: S506  # nosec B506
    return raw["Parameters"][parameter]["Default"]


class LambdaInvoker:
    """``invoker.SyncInvoker`` over the Lambda model: an asynchronous invoke of the sync function. The
    resync fans out on real worker threads, so the scheduler's queue is entered under a lock."""

    def __init__(self, function: LambdaFunction) -> None:
        self._function = function
        self._lock = threading.Lock()

    def invoke(self, open_id: str, reason: str, *, delivery_id: str = "", claimed_at: int = 0) -> None:
        """``InvocationType=Event`` with the sync request."""
        with self._lock:
            self._function.invoke_async(
                {"open_id": open_id, "reason": reason, "delivery_id": delivery_id, "claimed_at": claimed_at}
            )


@dataclass
class Push:
    """One change pushed for one user: when, and when the mirror had it (None: not yet)."""

    open_id: str
    at: float
    mirrored_at: float | None = None


@dataclass
class FleetWorld:
    """One deployment in virtual time (see the module docstring); build it with ``FleetWorld.build``."""

    clock: VirtualTime
    sim: FeishuSimulator
    users: FakeUsers
    listings: FakeListings
    calendars: FakeMirror[Calendar]
    events: FakeMirror[Event]
    gate_table: FakeGateTable
    services: Services
    sync_function: LambdaFunction
    resync_function: LambdaFunction
    pushes: list[Push] = field(default_factory=list)
    _open_pushes: dict[str, list[Push]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        settings: Settings | None = None,
        latency: tuple[float, float] = FEISHU_LATENCY,
        reserved_concurrency: int | None = None,
        seed: int = 16,
        invoker: SyncInvoker | None = None,
    ) -> FleetWorld:
        """An empty deployment (add users with ``authorize``); ``invoker`` replaces the sync function's
        asynchronous invokes (a run that syncs users itself)."""
        random.seed(seed)  # the simulator's answer times
        clock = VirtualTime()
        sim = FeishuSimulator(
            app_id="cli_fleet",
            latency=latency,
            rate_per_second=FEISHU_PER_SECOND,
            rate_per_minute=FEISHU_PER_MINUTE,
            clock=clock.time,
            monotonic=clock.monotonic,
            sleep=clock.sleep,
        )
        settings = replace(
            settings or Settings(),
            users_table="Users",
            calendars_table="Calendars",
            events_table="Events",
            event_listings_table="EventListings",
            rate_limit_table="RateLimit",
        )
        users = FakeUsers()
        listings = FakeListings(users)
        calendars: FakeMirror[Calendar] = FakeMirror(users)
        events: FakeMirror[Event] = FakeMirror(users)
        gate_table = FakeGateTable()
        tables = Tables(
            users=cast("Any", users),
            fenced=cast("Any", None),  # used by the DynamoDB mirror adapters only
            schedule=cast("Any", users),
            tokens=cast("Any", users),
            health=cast("Any", users),
            calendars=cast("Any", calendars),
            events=cast("Any", events),
            listings=cast("Any", listings),
            oauth_states=cast("Any", None),
        )
        rng = random.Random(seed)
        box: list[FleetWorld] = []
        sync_function = LambdaFunction(
            clock,
            FunctionConfig(
                "SyncFunction",
                reserved_concurrency=reserved_concurrency or int(template_default("SyncReservedConcurrency")),
            ),
            lambda event, context: box[0]._sync_handler(event, context),  # noqa: PLW0108 - the world comes next
            rng=rng,
        )
        resync_function = LambdaFunction(
            clock,
            FunctionConfig("ResyncFunction", timeout=300.0),
            lambda _event, _context: box[0].services.resync.sweep().as_dict(),
            rng=rng,
        )
        services = composition.build(
            settings,
            GivenClients(cast("DynamoDBClient", gate_table), invoker or LambdaInvoker(sync_function), FakeDataKeys()),
            FeishuApp(
                FeishuCredentials(sim.app_id, sim.app_secret),
                session=sim.session(),
                sleep=clock.sleep,
                clock=clock.time,
            ),
            tables=tables,
            clock=clock.time,
            monotonic=clock.monotonic,
            sleep=clock.sleep,
            concurrency=cast("Concurrency", clock),
        )
        world = cls(
            clock, sim, users, listings, calendars, events, gate_table, services, sync_function, resync_function
        )
        box.append(world)
        sync_function.on_finish = world._on_sync_finished
        return world

    # ------------------------------------------------------------------ the world
    def load(self, population: Population) -> None:
        """Create the population's users and calendars in Feishu (org-wide calendars first)."""
        population.load_into(self.sim)

    def load_users(self, population: Population, users: list[UserSpec]) -> None:
        """Create more users in Feishu (after ``load``: the org-wide calendars exist)."""
        for user in users:
            population.load_user(self.sim, user)

    def authorize(self, open_ids: list[str]) -> None:
        """The users consent now: tokens from Feishu, sealed and stored; each is due at once."""
        vault = self.services.vault
        now = int(self.clock.time())
        for open_id in open_ids:
            body = self.sim.issue_user_tokens(open_id)
            grant = TokenGrant(
                body["access_token"],
                now + int(body["expires_in"]),
                body["refresh_token"],
                now + int(body["refresh_token_expires_in"]),
                body["scope"],
            )
            self.users.save_authorization(UserIdentity(open_id, open_id), vault.seal(open_id, grant), now)

    def schedule_resync(self, first_at: float, until: float, period: float) -> None:
        """The resync function's schedule: a run every ``period`` from ``first_at`` to ``until``."""
        at = first_at
        while at <= until:
            self.clock.at(at, lambda: self.resync_function.invoke_async({}))
            at += period

    def push_at(self, at: float, open_id: str, calendar_id: str) -> None:
        """At ``at``: an event of the user's calendar changes in Feishu, Feishu pushes, the callback dispatches."""

        def change() -> None:
            self.sim.create_event(open_id, calendar_id, summary="pushed change")
            push = Push(open_id, self.clock.now)
            self.pushes.append(push)
            self._open_pushes.setdefault(open_id, []).append(push)
            self.clock.after(CALLBACK_SECONDS, lambda: self._dispatch(open_id, calendar_id))

        self.clock.at(at, change)

    def sign_in_at(self, at: float, open_ids: list[str]) -> None:
        """At ``at``: the users' OAuth callbacks start their first syncs (as ``onboarding`` does)."""

        def dispatch() -> None:
            self.clock.spawn(lambda: self.services.pings.dispatch(open_ids, "oauth"), name="oauth")

        self.clock.at(at, dispatch)

    def _dispatch(self, open_id: str, calendar_id: str) -> None:
        self.clock.spawn(
            lambda: self.services.pings.dispatch([open_id], "push", calendar_id=calendar_id), name="callback"
        )

    # ------------------------------------------------------------------ the functions
    def _sync_handler(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        """What ``functions/sync/app.py`` does with one request."""
        remaining = context.get_remaining_time_in_millis() / 1000
        started = self.clock.now
        result = self.services.sync.sync_user(
            event["open_id"],
            owner=lease_owner(context.aws_request_id),
            deadline=self.clock.monotonic() + remaining - SAFETY_SECONDS,
            lease_seconds=int(remaining) + LEASE_MARGIN_SECONDS,
            claimed_at=int(event.get("claimed_at") or 0),
        )
        if result.outcome == "synced":
            for push in self._open_pushes.pop(result.open_id, []):
                if push.at <= started:  # the listing began after the change: it has it
                    push.mirrored_at = self.clock.now
                else:
                    self._open_pushes.setdefault(result.open_id, []).append(push)
        return {"result": result}

    def _on_sync_finished(self, _invocation: Any) -> None:
        return None

    def results(self) -> list[SyncResult]:
        """Every finished sync invocation's result, in the order they ended."""
        out = []
        for invocation in sorted(self.sync_function.stats.invocations, key=lambda i: i.ended_at or 0.0):
            if invocation.outcome == "ok" and invocation.result:
                out.append(invocation.result["result"])
        return out

    def quiet(self) -> contextlib.AbstractContextManager[None]:
        """``quiet_powertools`` (for runs driven from outside ``run``)."""
        return quiet_powertools()

    def run(self, until: float | None = None) -> None:
        """Run the world (quietly) until nothing is scheduled, or until virtual time ``until``."""
        with self.quiet():
            self.clock.run(until)
