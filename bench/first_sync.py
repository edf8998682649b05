"""A user's first sync with 1,000 readable calendars, each with a few events: time against Feishu's floor.

The real engine (``CalendarSync``: the calendar list, then each calendar's events and its event-change
subscription) with the real per-API ``DynamoRateGate`` on DynamoDB Local, against the Feishu simulator
over HTTP enforcing Feishu's own limits for each API (50/s and 1,000/min), in real time. Feishu budgets
each API on its own, so the floor is the busiest API's calls ÷ 1,000/min: 1,000 event listings (and as
many event subscriptions, beside them) take at least 60 s.

Run twice: with the simulator answering at once (what the gate and the engine cost by themselves), and
with Feishu-like answer times (``FEISHU_LATENCY``) on a smaller user, to show where the time goes. The
1,000-calendar first sync at Feishu's answer times is measured in virtual time by ``bench.fleet``
(``first_sync_1000_calendars_ratio_vs_floor``).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench.common import Entry, fresh_tables, machine_load, services
from feishu_mirror.models import SyncResult, TokenGrant, UserIdentity
from feishu_mirror.observability import metrics
from feishu_mirror.token_vault import DataKeys, KmsDataKeys
from local.dynamodb_local import DynamoDBLocal
from local.feishu_sim import FeishuSimulator
from local.kms import LocalKms

ROOT = Path(__file__).resolve().parent.parent
CALENDARS = 1000
EVENTS_PER_CALENDAR = 3
FEISHU_PER_MINUTE = 1000  # Feishu's limit for each calendar API
FEISHU_LATENCY = (0.1, 0.3)  # seconds per answer, as Feishu's from a nearby AWS region
LATENCY_CALENDARS = 100
INVOCATION_SECONDS = 290  # the sync function's 300 s timeout less its safety margin


class TimedSession(requests.Session):
    """A session that adds up the time spent in Feishu calls."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        """Send and time one request."""
        started = time.perf_counter()
        try:
            return super().request(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


@dataclass
class Measured:
    """One first sync: its result, wall time and where the time went."""

    result: SyncResult
    seconds: float
    calls: Counter[str]
    refused: int
    peak_per_minute: int
    gate_updates: int
    gate_wait: float
    feishu_seconds: float
    dynamodb_seconds: float
    dynamodb_requests: int

    @property
    def floor(self) -> float:
        """Seconds Feishu's per-API limit imposes: the busiest API's calls at 1,000 a minute."""
        return max(self.calls.values()) / FEISHU_PER_MINUTE * 60


def _first_sync(client: Any, keys: DataKeys, calendars: int, latency: tuple[float, float]) -> Measured:
    """Seed a user with ``calendars`` readable calendars in a fresh simulator and tables, then sync once."""
    settings = fresh_tables(client)
    with FeishuSimulator(app_id=f"cli_first_sync_{calendars}", latency=latency) as sim:
        open_id = "ou_bench_first_sync"
        sim.add_user(open_id, "Bench")
        calendar_ids = [str(sim.calendars(open_id)[0]["calendar_id"])]
        calendar_ids += [
            sim.create_calendar(open_id, summary=f"Shared {n}", type="shared", role="reader")
            for n in range(calendars - 1)
        ]
        for calendar_id in calendar_ids:
            for n in range(EVENTS_PER_CALENDAR):
                sim.create_event(open_id, calendar_id, summary=f"Event {n}")
        body = sim.issue_user_tokens(open_id)
        now = int(time.time())
        grant = TokenGrant(body["access_token"], now + 7200, body["refresh_token"], now + 604800, body["scope"])
        session = TimedSession()
        built = services(client, settings, sim=sim, data_keys=keys, session=session)
        built.tables.tokens.save_authorization(UserIdentity(open_id, "Bench"), built.vault.seal(open_id, grant), now)
        gate, engine = built.rate_gate, built.sync
        timing = _DynamoTiming(client, settings.rate_limit_table)
        # Every 100 data points of a metric Powertools prints them as one EMF document, as in Lambda.
        metrics.namespace = metrics.namespace or "FeishuCalendarMirrorBench"
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                result = engine.sync_user(
                    open_id, owner="bench", deadline=time.monotonic() + INVOCATION_SECONDS, lease_seconds=330
                )
        finally:
            timing.stop()
            metrics.clear_metrics()
        seconds = time.perf_counter() - started
        log = list(sim.requests_log)
        calls = Counter(r.api for r in log)
        return Measured(
            result=result,
            seconds=seconds,
            calls=calls,
            refused=sum(1 for r in log if r.fault == "rate_limit"),
            peak_per_minute=sim.peak_rates()[1],
            gate_updates=timing.gate_updates,
            gate_wait=gate.waited_seconds,
            feishu_seconds=session.seconds,
            dynamodb_seconds=timing.seconds,
            dynamodb_requests=timing.requests,
        )


class _DynamoTiming:
    """Times every DynamoDB request of the (single-threaded) sync; counts the gate's updates apart."""

    def __init__(self, client: Any, gate_table: str) -> None:
        self._client, self._gate_table = client, gate_table
        self._started = 0.0
        self.seconds = 0.0
        self.requests = 0
        self.gate_updates = 0
        client.meta.events.register("before-parameter-build.dynamodb", self._count)
        client.meta.events.register("before-call.dynamodb", self._before)
        client.meta.events.register("after-call.dynamodb", self._after)

    def _count(self, params: dict[str, Any], **_: Any) -> None:
        self.requests += 1
        if params.get("TableName") == self._gate_table:
            self.gate_updates += 1

    def _before(self, **_: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, **_: Any) -> None:
        self.seconds += time.perf_counter() - self._started

    def stop(self) -> None:
        """Stop timing."""
        self._client.meta.events.unregister("before-parameter-build.dynamodb", self._count)
        self._client.meta.events.unregister("before-call.dynamodb", self._before)
        self._client.meta.events.unregister("after-call.dynamodb", self._after)


def first_sync() -> list[Entry]:
    """The first sync of 1,000 calendars at the simulator's own pace, then of 100 at Feishu-like latency."""
    with DynamoDBLocal(ROOT / ".local" / "dynamodb") as dynamodb, LocalKms() as kms:
        client = dynamodb.client()
        keys = KmsDataKeys(kms.client(), kms.create_key("bench token key"))
        fast = _first_sync(client, keys, CALENDARS, (0.0, 0.0))
        slow = _first_sync(client, keys, LATENCY_CALENDARS, FEISHU_LATENCY)
    for measured in (fast, slow):
        assert measured.result.outcome == "synced", measured.result
        assert measured.result.event_listings == max(measured.calls.values()), (measured.result, measured.calls)
    total_calls = sum(fast.calls.values())
    name = f"first_sync_{CALENDARS}_calendars_simulator_pace"
    latency = f"first_sync_{LATENCY_CALENDARS}_calendars_feishu_latency"
    return [
        Entry(f"{name}_feishu_calls", total_calls, "calls"),
        Entry(f"{name}_busiest_api_calls", max(fast.calls.values()), "calls", floor=CALENDARS),
        Entry(f"{name}_wall_time", fast.seconds, "s", floor=fast.floor),
        Entry(f"{name}_ratio_vs_floor", fast.seconds / fast.floor, "ratio", target=1.1, floor=1.0),
        Entry(f"{name}_responses_429", fast.refused, "responses", target=0, floor=0),
        Entry(f"{name}_peak_requests_one_api_60s", fast.peak_per_minute, "requests", target=FEISHU_PER_MINUTE),
        Entry(f"{name}_gate_updates_per_call", fast.gate_updates / total_calls, "updates", target=1.1, floor=1.0),
        Entry(f"{name}_gate_wait", fast.gate_wait, "s"),
        Entry(f"{name}_feishu_call_time", fast.feishu_seconds, "s"),
        Entry(f"{name}_dynamodb_time", fast.dynamodb_seconds, "s"),
        Entry(f"{name}_dynamodb_requests", fast.dynamodb_requests, "requests"),
        Entry(f"{latency}_wall_time", slow.seconds, "s", floor=slow.floor),
        Entry(f"{latency}_ratio_vs_floor", slow.seconds / slow.floor, "ratio", floor=1.0),
        Entry(f"{latency}_feishu_call_time", slow.feishu_seconds, "s"),
        machine_load("first_sync_machine_load"),
    ]
