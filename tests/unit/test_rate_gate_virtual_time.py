"""The real per-API rate gate over its table in memory, in virtual time: many callers on one API never
exceed its budget, another API keeps its own, and a steady stream costs one update per request."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, cast

from feishu_mirror.dynamodb.rate_gate import DynamoRateGate
from local.virtual_time import VirtualTime
from tests.fake_gate_table import FakeGateTable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

LISTINGS = "GET /open-apis/calendar/v4/calendars/:calendar_id/events"
SUBSCRIPTIONS = "POST /open-apis/calendar/v4/calendars/:calendar_id/events/subscription"


def _peak(times: list[float], window: float) -> int:
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


def test_many_callers_stay_within_each_apis_budget() -> None:
    # GIVEN 40 callers on the event listings and 2 on the subscriptions, each calling as fast as it may
    clock = VirtualTime()
    table = FakeGateTable()
    gate = DynamoRateGate(
        cast("DynamoDBClient", table),
        "gate",
        "feishu-app:test",
        clock=clock.time,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
    )
    starts: dict[str, list[float]] = {LISTINGS: [], SUBSCRIPTIONS: []}

    def caller(api: str) -> None:
        while clock.now < 180:
            gate.acquire(api, deadline=clock.monotonic() + 600)
            starts[api].append(clock.now)
            clock.sleep(0.2)  # Feishu's answer

    for n in range(42):
        clock.spawn(caller, LISTINGS if n < 40 else SUBSCRIPTIONS)
    # WHEN they run for three minutes
    clock.run()
    # THEN each API started at most 961 requests in any minute and 26 in any second (under Feishu's 1,000
    # and 50), the busy one used its budget, and a request cost one update of the gate's table
    for api in (LISTINGS, SUBSCRIPTIONS):
        times = sorted(starts[api])
        assert _peak(times, 60.0) <= 961, api
        assert _peak(times, 1.0) <= 26, api
    assert len(starts[LISTINGS]) >= 950 * 3 - 10
    assert (
        2 * 900 <= len(starts[SUBSCRIPTIONS]) <= 2 * 901
    )  # 2 callers × one call per 0.2 s: under the budget, never held
    total = sum(len(times) for times in starts.values())
    assert table.updates <= total * 1.01 + 10
