"""Seeded, reproducible fault schedules against the real sync machinery.

A schedule onboards a few users, then interleaves calendar changes, pings (which start syncs on
threads, as async invokes would), duplicate and concurrent syncs, and faults: 429 with a reset,
5xx, slow answers past the client's timeout, dropped connections, empty pages with ``has_more``,
190008 on sync and page tokens, expired access tokens (so refresh tokens rotate), syncs killed after
some pages (a Lambda timeout: no cleanup, the lease stays), and failing async invokes. Then it
quiesces, runs one scheduled resync (and, for held mass deletions, the confirming one) and checks:

* the mirror equals Feishu's truth field by field, for every user;
* no refresh token was ever presented twice;
* every committed ``sync_token`` came from the last page of a listing the same sync applied;
* Feishu never saw more requests in any 1 s / 60 s window than its limits.

Time is scaled: the simulator's limits and the rate gate are 10× Feishu's, and the client's waits
(``x-ogw-ratelimit-reset``, backoff) are divided by ``TIME_SCALE``, so hundreds of schedules fit in
``make test``. Everything else (DynamoDB Local, HTTP, threads) is real.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from feishu_mirror.config import Settings
from feishu_mirror.feishu import FeishuClient, RetryPolicy
from feishu_mirror.models import CALENDAR_FIELDS, Checkpoint, Page, SyncResult, TokenGrant, UserIdentity
from feishu_mirror.pings import PingDispatcher
from feishu_mirror.resync import Resync
from feishu_mirror.store import CalendarStore, DynamoRateGate, Fence, UserStore, attribute_values, plain
from feishu_mirror.sync import CalendarSync
from local.dynamodb_local import create_tables
from local.feishu_sim import FeishuSimulator, delay, drop, empty_page, feishu_error, http_error, rate_limited
from local.stack import ROOT
from local.template import load

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

TIME_SCALE = 20
RATE_SCALE = 10
LIMIT_PER_SECOND, LIMIT_PER_MINUTE = 50 * RATE_SCALE, 1000 * RATE_SCALE
LEASE_SECONDS = 30
LATER = 7 * 3600  # past every backoff, lease and staleness: "the next scheduled run"
CALENDARS_PATH = "/open-apis/calendar/v4/calendars"
TOKEN_PATH = "/open-apis/authen/v2/oauth/token"


class LambdaKilled(BaseException):
    """The invocation died (timeout, OOM): nothing after this point runs, not even cleanup."""


@dataclass
class Report:
    """What one schedule did, for the failure message and the suite's figures."""

    seed: int
    steps: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    syncs: Counter[str] = field(default_factory=Counter)

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

    def invoke(self, open_id: str, reason: str, *, event_id: str = "") -> None:
        """Start a sync for the user (or fail to hand it over, when told to)."""
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("simulated Lambda API failure")
        self.start(open_id, reason)

    def start(self, open_id: str, reason: str) -> None:
        """Run a sync on a new thread (an invocation Lambda accepted or retried)."""
        thread = threading.Thread(target=self._guarded, args=(open_id,), name=f"sync-{reason}")
        self.threads.append(thread)
        thread.start()

    def _guarded(self, open_id: str) -> None:
        try:
            self._run(open_id)
        except LambdaKilled:
            pass
        except BaseException as exc:
            self.errors.append(exc)

    def join(self) -> None:
        """Wait for every started sync."""
        for thread in self.threads:
            thread.join(60)


class Schedule:
    """One seeded schedule on fresh tables and a fresh simulator."""

    def __init__(self, seed: int, client: DynamoDBClient) -> None:
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.client = client
        template = load(ROOT, prefix=f"f{uuid.uuid4().hex[:8]}-")
        create_tables(client, template.tables, template.table_names)
        names = template.table_names
        self.settings = Settings(
            users_table=names["UsersTable"],
            calendars_table=names["CalendarsTable"],
            rate_limit_table=names["RateLimitTable"],
            page_size=50,
            feishu_requests_per_minute=950 * RATE_SCALE,
        )
        self.users = UserStore(client, self.settings.users_table)
        self.calendars = CalendarStore(client, self.settings.calendars_table, self.settings.users_table)
        self.sim = FeishuSimulator(
            app_id=f"cli_{seed}", rate_per_second=LIMIT_PER_SECOND, rate_per_minute=LIMIT_PER_MINUTE
        ).start()
        self.gate = DynamoRateGate(
            client,
            self.settings.rate_limit_table,
            "feishu",
            requests_per_minute=self.settings.feishu_requests_per_minute,
        )
        self.kill_after_pages: dict[str, int] = {}
        self.final_pages: dict[int, set[str]] = {}
        self.bad_commits: list[str] = []
        self.syncs = SyncThreads(self.sync)
        self.pings = PingDispatcher(self.users, self.syncs)
        self.open_ids: list[str] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the machinery under test
    def feishu(self) -> FeishuClient:
        """A client whose every page is recorded, so commits can be checked against last pages."""
        client = FeishuClient(
            base_url=self.sim.url,
            accounts_url=self.sim.url,
            app_id=self.sim.app_id,
            app_secret=self.sim.app_secret,
            rate_gate=self.gate,
            retry=RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=2.0, read_timeout=0.5),
            sleep=lambda seconds: time.sleep(seconds / TIME_SCALE),
        )
        original = client.list_calendars

        def recorded(*args: Any, **kwargs: Any) -> Page[Any]:
            page = original(*args, **kwargs)
            if not page.has_more and page.sync_token:
                with self._lock:
                    self.final_pages.setdefault(threading.get_ident(), set()).add(page.sync_token)
            return page

        client.list_calendars = recorded  # type: ignore[method-assign]
        return client

    def sync(self, open_id: str, clock_offset: int = 0) -> SyncResult:
        """One sync invocation, with the schedule's kill switch and commit checks wired in."""
        users = _ScheduleUsers(self, open_id)
        engine = CalendarSync(
            users=users,  # type: ignore[arg-type]
            calendars=self.calendars,
            feishu=self.feishu(),
            settings=self.settings,
            clock=lambda: time.time() + clock_offset,
        )
        result = engine.run(
            open_id, owner=uuid.uuid4().hex, deadline=time.monotonic() + 30, lease_seconds=LEASE_SECONDS
        )
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

    def _onboard(self, open_id: str, calendars: int) -> None:
        self.sim.add_user(open_id, open_id)
        for n in range(calendars - 1):
            self.sim.create_calendar(open_id, summary=f"c{n}", color=n)
        body = self.sim.issue_user_tokens(open_id)
        now = int(time.time())
        grant = TokenGrant(body["access_token"], now + 7200, body["refresh_token"], now + 604800, body["scope"])
        self.users.save_authorization(UserIdentity(open_id, open_id), grant, now)
        self.open_ids.append(open_id)
        self.report.note(f"onboard {open_id} with {calendars} calendars")

    def _step(self) -> None:
        rng, open_id = self.rng, self.rng.choice(self.open_ids)
        action = rng.choices(
            [
                "change",
                "ping",
                "duplicate_sync",
                "fault",
                "expire_sync",
                "expire_access",
                "kill",
                "invoke_fails",
                "pause",
            ],
            weights=[30, 25, 8, 20, 5, 5, 3, 3, 6],
        )[0]
        if action == "change":
            self._change(open_id)
        elif action == "ping":
            copies = rng.choice([1, 1, 2, 3])  # duplicate and retried deliveries
            for _ in range(copies):
                self.pings.dispatch([open_id], "calendar_changed")
            self.report.note(f"ping {open_id} ×{copies}")
        elif action == "duplicate_sync":
            self.syncs.start(open_id, "duplicate")
            self.report.note(f"extra concurrent sync {open_id}")
        elif action == "fault":
            self._fault()
        elif action == "expire_sync":
            self.sim.expire_sync_tokens(open_id if rng.random() < 0.7 else None)
            self._count("190008")
            self.report.note(f"expire sync and page tokens ({open_id})")
        elif action == "expire_access":
            self.sim.expire_access_tokens(open_id)
            self._count("access token expired (99991677)")
            self.report.note(f"expire access token {open_id}")
        elif action == "kill":
            pages = rng.randint(1, 2)
            self.kill_after_pages[open_id] = pages
            self._count("sync killed mid-listing")
            self.report.note(f"kill {open_id}'s next sync after {pages} page(s)")
        elif action == "invoke_fails":
            self.syncs.fail_next += 1
            self._count("async invoke failed")
            self.report.note("next async invoke fails")
        else:
            time.sleep(rng.uniform(0, 0.05))

    def _change(self, open_id: str) -> None:
        rng = self.rng
        live = [c["calendar_id"] for c in self.sim.calendars(open_id) if c["type"] != "primary"]
        kind = rng.choice(["create", "update", "delete"] if live else ["create"])
        for _ in range(rng.choice([1, 1, 2, 5, 20])):
            live = [c["calendar_id"] for c in self.sim.calendars(open_id) if c["type"] != "primary"]
            if kind == "create" or not live:
                self.sim.create_calendar(
                    open_id, summary=f"new {rng.random():.6f}", role=rng.choice(["owner", "reader"])
                )
            elif kind == "update":
                self.sim.update_calendar(
                    open_id, rng.choice(live), summary=f"upd {rng.random():.6f}", color=rng.randint(-9, 9)
                )
            else:
                self.sim.delete_calendar(open_id, rng.choice(live))
        self.report.note(f"{kind} calendars of {open_id}")

    def _fault(self) -> None:
        rng = self.rng
        kind, path, fault = rng.choice(
            [
                ("429 with reset", CALENDARS_PATH, rate_limited(rng.randint(1, 3))),
                ("5xx", CALENDARS_PATH, http_error(rng.choice([500, 502, 503]))),
                ("5xx with code 190003", CALENDARS_PATH, http_error(500, code=190003)),
                ("slow answer / timeout", CALENDARS_PATH, delay(rng.choice([0.05, 0.7]))),
                ("dropped connection", CALENDARS_PATH, drop()),
                ("empty page with has_more", CALENDARS_PATH, empty_page()),
                ("190008 on a page", CALENDARS_PATH, feishu_error(190008, 400, "page_token or sync_token expired")),
                ("token endpoint 5xx", TOKEN_PATH, http_error(503)),
                ("token endpoint 20050", TOKEN_PATH, feishu_error(20050, 500, "server error")),
            ]
        )
        self.sim.inject(path, fault)
        self._count(kind)
        self.report.note(f"fault: {kind}")

    def _count(self, kind: str) -> None:
        self.report.faults[kind] += 1

    # ------------------------------------------------------------------ convergence
    def _quiesce_and_check(self) -> None:
        self.sim.clear_faults()
        self.kill_after_pages.clear()
        self.syncs.fail_next = 0
        assert not self.syncs.errors, f"a sync raised {self.syncs.errors[0]!r}\n{self.report}"
        self._scheduled_resync(LATER)
        if any("held_sweep" in self.user(o) for o in self.open_ids):
            self.report.note("held mass deletion: the confirming resync")
            self._scheduled_resync(LATER + self.settings.mass_delete_confirm_seconds + 1)
        for open_id in self.open_ids:
            truth = {
                c["calendar_id"]: {k: c[k] for k in CALENDAR_FIELDS if k in c} for c in self.sim.calendars(open_id)
            }
            mirror = {
                cid: {k: v for k, v in item.items() if k in CALENDAR_FIELDS} for cid, item in self.live(open_id).items()
            }
            assert mirror == truth, f"{open_id}: mirror {sorted(mirror)} != Feishu {sorted(truth)}\n{self.report}"
            assert self.user(open_id)["status"] == "active", f"{open_id} needs reauth\n{self.report}"
        assert self.sim.refresh_token_reuse_count == 0, f"a refresh token was presented twice\n{self.report}"
        assert not self.bad_commits, f"sync_token committed without its last page: {self.bad_commits}\n{self.report}"
        per_second, per_minute = self.sim.peak_rates()
        assert per_second <= LIMIT_PER_SECOND, f"{per_second} requests in 1 s\n{self.report}"
        assert per_minute <= LIMIT_PER_MINUTE, f"{per_minute} requests in 60 s\n{self.report}"

    def _scheduled_resync(self, offset: int) -> None:
        started: list[str] = []

        class Collect:
            def invoke(self, open_id: str, reason: str, *, event_id: str = "") -> None:
                started.append(open_id)

        Resync(self.users, Collect(), max_users=100, clock=lambda: time.time() + offset).run()
        for open_id in started:
            result = self.sync(open_id, clock_offset=offset)
            assert result.outcome == "synced", f"resync of {open_id}: {result}\n{self.report}"

    def user(self, open_id: str) -> dict[str, Any]:
        """The user's item."""
        found = self.users.get_plain(open_id)
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


class _ScheduleUsers:
    """The users store as one sync invocation sees it, with the schedule's kill switch and checks."""

    def __init__(self, schedule: Schedule, open_id: str) -> None:
        self._schedule = schedule
        self._store = schedule.users
        self._pages = 0
        self._kill_after = schedule.kill_after_pages.pop(open_id, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def save_checkpoint(self, fence: Fence, now: int, checkpoint: Checkpoint) -> None:
        """Checkpoint, then die here if this sync is to be killed after this many pages."""
        self._store.save_checkpoint(fence, now, checkpoint)
        self._pages += 1
        if self._kill_after is not None and self._pages >= self._kill_after:
            raise LambdaKilled

    def commit_listing(self, fence: Fence, now: int, **kwargs: Any) -> None:
        """Only tokens that this thread received on a last page may be committed."""
        token = kwargs.get("sync_token")
        if token and token not in self._schedule.final_pages.get(threading.get_ident(), set()):
            self._schedule.bad_commits.append(token)
        if self._kill_after is not None:
            raise LambdaKilled  # killed before the commit: the listing must resume or restart later
        self._store.commit_listing(fence, now, **kwargs)
