"""10,000 users: the scheduled resync's selection and fan-out, and a forced sweep against Feishu's limits.

(a) A routine run where 1% of users are due: the real ``Resync`` on DynamoDB Local, counting every
    DynamoDB operation it sends and every sync it starts.
(b) A forced sweep of all users: the real selection and claims (the scheduled runs back to back, each
    starting at most ``RESYNC_MAX_USERS_PER_RUN``), then a discrete-event model of the
    sync fleet (``SyncReservedConcurrency`` workers, each Feishu call taking 150 ms) whose every Feishu
    call goes through the real ``DynamoRateGate`` on DynamoDB Local, with a virtual clock. Feishu's
    per-app limits (50/s, 1,000/min) put the floor for 10,000 listing calls at 10 minutes.
"""

from __future__ import annotations

import bisect
import heapq
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Any

from bench.common import Entry
from feishu_mirror import composition
from feishu_mirror.composition import FeishuApp, GivenClients
from feishu_mirror.config import FeishuCredentials, Settings
from feishu_mirror.dynamodb.users import due_shard
from feishu_mirror.dynamodb.values import attribute_values
from feishu_mirror.resync import Resync
from local.dynamodb_local import DynamoDBLocal, create_tables
from local.template import load

ROOT = Path(__file__).resolve().parent.parent
USERS = 10_000
ROUTINE_DUE_FRACTION = 0.01
SYNC_WORKERS = 5  # the template's SyncReservedConcurrency default
FEISHU_CALL_SECONDS = 0.15
DYNAMODB_WRITE_SECONDS = 0.03
FLOOR_SECONDS = USERS / 1000 * 60  # 1,000 requests per minute


class CountingInvoker:
    """Records the syncs the resync starts."""

    def __init__(self) -> None:
        self.invoked: list[str] = []

    def invoke(self, open_id: str, reason: str, *, delivery_id: str = "", claimed_at: int = 0) -> None:  # noqa: ARG002 - the SyncInvoker protocol
        """Record one."""
        self.invoked.append(open_id)


def _seed(client: Any, table: str, due_now: int, now: int) -> None:
    items = []
    for n in range(USERS):
        open_id = f"ou_scale_{n:05d}"
        due_at = now - 60 if n < due_now else now + 3600 + n
        items.append(
            {"open_id": open_id, "status": "active", "due_shard": due_shard(open_id), "due_at": due_at, "dirty_seq": 0}
        )
    for start in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": attribute_values(item)}} for item in items[start : start + 25]]
        request: dict[str, Any] = {table: batch}
        while request:
            request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}


def _peak(times: list[float], window: float) -> int:
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered))


def scale() -> list[Entry]:
    """Both scenarios on fresh tables."""
    entries: list[Entry] = []
    with DynamoDBLocal(ROOT / ".local" / "dynamodb") as dynamodb:
        client = dynamodb.client()
        operations: Counter[str] = Counter()
        client.meta.events.register("before-call.dynamodb.*", lambda model, **_: operations.update([model.name]))

        # (a) routine run: 1% due
        template = load(ROOT, prefix=f"s{uuid.uuid4().hex[:6]}-")
        create_tables(client, template.tables, template.table_names)
        users_table = template.table_names["UsersTable"]
        now = int(time.time())
        due = int(USERS * ROUTINE_DUE_FRACTION)
        _seed(client, users_table, due, now)
        invoker = CountingInvoker()
        operations.clear()
        outcome = composition.build(Settings(users_table=users_table), GivenClients(client, invoker)).resync.sweep()
        entries += [
            Entry("resync_routine_users", USERS, "users"),
            Entry("resync_routine_syncs_started", outcome.started, "invokes", target=due, floor=due),
            Entry("resync_routine_scans", operations["Scan"], "requests", target=0, floor=0),
            Entry("resync_routine_index_queries", operations["Query"], "requests", target=16),
            Entry("resync_routine_conditional_claims", operations["UpdateItem"], "requests", target=due, floor=due),
        ]

        # (b) forced sweep: every user due
        template = load(ROOT, prefix=f"w{uuid.uuid4().hex[:6]}-")
        create_tables(client, template.tables, template.table_names)
        users_table = template.table_names["UsersTable"]
        _seed(client, users_table, USERS, now)
        invoker = CountingInvoker()
        operations.clear()
        started = time.perf_counter()
        resync = composition.build(Settings(users_table=users_table), GivenClients(client, invoker)).resync
        runs = _runs_until_nobody_is_due(resync)
        fanout = time.perf_counter() - started
        request_times = _model_sync_fleet(client, template.table_names["RateLimitTable"], invoker.invoked)
        finish = max(request_times) + FEISHU_CALL_SECONDS
        peak_second, peak_minute = _peak(request_times, 1.0), _peak(request_times, 60.0)
        entries += [
            Entry("sweep_syncs_started", len(invoker.invoked), "invokes", target=USERS, floor=USERS, better="higher"),
            Entry("sweep_resync_runs", runs, "runs"),
            Entry("sweep_resync_fanout_wall_time", fanout, "s", target=900),
            Entry("sweep_time_to_finish", finish, "s", floor=FLOOR_SECONDS),
            Entry("sweep_time_ratio_vs_floor", finish / FLOOR_SECONDS, "ratio", target=1.1, floor=1.0),
            Entry("sweep_peak_requests_any_1s", peak_second, "requests", target=50),
            Entry("sweep_peak_requests_any_60s", peak_minute, "requests", target=1000),
        ]
    return entries


def _runs_until_nobody_is_due(resync: Resync) -> int:
    """Scheduled runs back to back (each starts at most ``RESYNC_MAX_USERS_PER_RUN``) until one starts
    nobody: the schedule's runs of a sweep, without the minute between them. Returns the runs that
    started someone."""
    runs = 0
    while resync.sweep().started:
        runs += 1
    return runs


def _model_sync_fleet(client: Any, rate_table: str, open_ids: list[str]) -> list[float]:
    """When each of the syncs' Feishu calls starts, with ``SYNC_WORKERS`` syncs running at a time."""
    clock = {"now": 0.0}
    epoch = time.time()  # a real date: the gate's item carries a TTL that DynamoDB Local enforces
    gate = composition.build(
        Settings(rate_limit_table=rate_table),  # 950 requests a minute per API, as deployed
        GivenClients(client),
        FeishuApp(FeishuCredentials("sweep", "unused")),
        clock=lambda: epoch + clock["now"],
        monotonic=lambda: clock["now"],
        sleep=lambda seconds: clock.__setitem__("now", clock["now"] + seconds),
    ).rate_gate
    workers = [(0.0, n) for n in range(SYNC_WORKERS)]
    heapq.heapify(workers)
    pending = deque(open_ids)
    times: list[float] = []
    while pending:
        free_at, worker = heapq.heappop(workers)
        clock["now"] = free_at
        pending.popleft()
        gate.acquire("GET /open-apis/calendar/v4/calendars", deadline=clock["now"] + 900)
        times.append(clock["now"])
        heapq.heappush(workers, (clock["now"] + FEISHU_CALL_SECONDS + DYNAMODB_WRITE_SECONDS, worker))
    return times
