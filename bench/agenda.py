"""A week's agenda for a user with 10 calendars × 1,000 events: read units and latency.

The user's calendars hold a realistic mix over 18 months back and 6 months ahead: meetings, all-day
and multi-day events, recurring series (daily standups, weekly and fortnightly meetings, monthly
reviews; some ended by COUNT or UNTIL, most open-ended, many begun a year ago) and their modified and
cancelled occurrences. They reach the mirror the real way: the simulator lists them and the sync
function writes them. Then:

- ``agenda_week_rcu``: the read units of one week's agenda (the user, their calendars, the two index
  queries), from DynamoDB Local's ``ReturnConsumedCapacity``, against ``agenda_all_events_rcu``, what
  reading all the user's events would cost;
- ``agenda_week_ms``: p99 of ``GET /v1/users/{open_id}/agenda`` for a week through the local API, the
  agenda function under the Lambda emulator and DynamoDB Local (weeks from 8 back to 12 ahead).
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import requests

from bench.common import Entry, percentile, services, simulated_stack
from feishu_mirror.agenda import Window
from feishu_mirror.composition import Services
from feishu_mirror.config import Settings
from feishu_mirror.dynamodb.calls import query_pages
from feishu_mirror.dynamodb.mirror import calendar_key
from feishu_mirror.dynamodb.values import attribute_values
from feishu_mirror.models import TokenGrant, UserIdentity
from local.feishu_sim import FeishuSimulator
from local.stack import LocalStack

USER = "ou_bench_agenda"
CALENDARS = 10
EVENTS_PER_CALENDAR = 1000
REQUESTS = 300
SERIES = 25  # per calendar: 2.5% of its events, two in five of them over by now
ZONE = "Asia/Shanghai"
TZ = ZoneInfo(ZONE)
DAY = 86400
WEEKLY_RULES = (
    "FREQ=WEEKLY;BYDAY=MO",
    "FREQ=WEEKLY;BYDAY=TU,TH",
    "FREQ=WEEKLY;INTERVAL=2;BYDAY=WE",
    "FREQ=WEEKLY;BYDAY=FR",
)
OTHER_RULES = (
    "FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR",
    "FREQ=MONTHLY",
    "FREQ=MONTHLY;BYDAY=1MO",
    "FREQ=DAILY;COUNT=20",
    "FREQ=WEEKLY;COUNT=12",
)


def _times(start: int, seconds: int) -> dict[str, Any]:
    return {
        "start_time": {"timestamp": str(start), "timezone": ZONE},
        "end_time": {"timestamp": str(start + seconds), "timezone": ZONE},
    }


def _days(day: datetime, days: int) -> dict[str, Any]:
    return {
        "start_time": {"date": day.date().isoformat(), "timezone": ZONE},
        "end_time": {"date": (day + timedelta(days=days)).date().isoformat(), "timezone": ZONE},
    }


def _fill(sim: FeishuSimulator, calendar_id: str, today: datetime, rng: random.Random) -> int:
    """1,000 events: 2.5% series (daily, weekly, fortnightly, monthly; two in five ended), ~1.5% moved
    or cancelled occurrences, 4% all-day or multi-day, the rest meetings."""
    made = 0

    def working_time(day_offset: int) -> int:
        day = today + timedelta(days=day_offset)
        return int(day.replace(hour=rng.randint(8, 18), minute=rng.choice((0, 15, 30, 45))).timestamp())

    for n in range(SERIES):  # series begun up to a year and a half ago; some ended since
        begin = working_time(rng.randint(-540, -7))
        rule = rng.choice(WEEKLY_RULES if n % 4 else OTHER_RULES)
        if n % 5 < 2 and "COUNT" not in rule:  # two in five have ended (or end soon)
            rule += f";UNTIL={(today + timedelta(days=rng.randint(-400, 30))):%Y%m%dT000000Z}"
        seconds = rng.choice((900, 1800, 3600))
        master = sim.create_event(USER, calendar_id, summary=f"Series {n}", recurrence=rule, **_times(begin, seconds))
        made += 1
        if "COUNT" not in rule and "UNTIL" not in rule:  # one occurrence of each running series moved or cancelled
            uid = master.rsplit("_", 1)[0]
            weeks = rng.randint(-6, 6)
            original = begin + ((working_time(weeks * 7) - begin) // (7 * DAY)) * 7 * DAY
            moved = original + rng.choice((3600, -7200, 2 * DAY))
            status = "cancelled" if n % 4 == 0 else "confirmed"
            sim.create_event(
                USER,
                calendar_id,
                event_id=f"{uid}_{original}",
                summary=f"Series {n} (moved)",
                is_exception=True,
                recurring_event_id=master,
                status=status,
                **_times(moved, seconds),
            )
            made += 1
    for n in range(40):  # all-day and multi-day
        day = today + timedelta(days=rng.randint(-540, 180))
        sim.create_event(
            USER, calendar_id, summary=f"Away {n}", free_busy_status="free", **_days(day, rng.choice((1, 1, 2, 3)))
        )
        made += 1
    while made < EVENTS_PER_CALENDAR:  # meetings, more in the past than ahead
        sim.create_event(
            USER,
            calendar_id,
            summary=f"Meeting {made}",
            **_times(working_time(rng.randint(-540, 180)), rng.choice((1800, 3600, 5400))),
        )
        made += 1
    return made


def _services(stack: LocalStack) -> Services:
    """The services on the local stack's tables, as the functions build them."""
    names = stack.template.table_names
    settings = Settings(
        users_table=names["UsersTable"], calendars_table=names["CalendarsTable"], events_table=names["EventsTable"]
    )
    return services(stack.client(), settings)


def _seed(stack: LocalStack, sim: FeishuSimulator, today: datetime) -> None:
    rng = random.Random(17)  # a reproducible mix
    sim.add_user(USER, "Bench Agenda")
    calendars = [next(c["calendar_id"] for c in sim.calendars(USER))]
    calendars += [sim.create_calendar(USER, summary=f"Team {n}", role="reader") for n in range(CALENDARS - 1)]
    for calendar_id in calendars:
        _fill(sim, calendar_id, today, rng)
    body = sim.issue_user_tokens(USER)
    now = int(time.time())
    grant = TokenGrant(body["access_token"], now + 7200, body["refresh_token"], now + 604800, body["scope"])
    _services(stack).tables.tokens.save_authorization(UserIdentity(USER), stack.token_vault().seal(USER, grant), now)
    result = stack.invoke("SyncFunction", {"open_id": USER, "reason": "resync"})
    if result.error or result.payload.get("outcome") != "synced":
        raise RuntimeError(f"the seeding sync failed: {result.error or result.payload}")


def _all_events_rcu(stack: LocalStack, calendar_ids: list[str]) -> float:
    """What reading every event item of the user costs (one Query per calendar, eventually consistent)."""
    client, total = stack.client(), 0.0
    for calendar_id in calendar_ids:
        request = {
            "TableName": stack.template.table_names["EventsTable"],
            "KeyConditionExpression": "calendar_key = :k",
            "ExpressionAttributeValues": attribute_values({":k": calendar_key(USER, calendar_id)}),
            "ReturnConsumedCapacity": "TOTAL",
        }
        total += sum(page["ConsumedCapacity"]["CapacityUnits"] for page in query_pages(client, request))
    return total


def agenda_cost() -> list[Entry]:
    """Seed the user, then measure one week's read units and the route's latency."""
    today = datetime.now(TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    with simulated_stack() as (stack, sim):
        _seed(stack, sim, today)
        built = _services(stack)
        monday = today - timedelta(days=today.weekday())
        week = Window.days_from(int(monday.timestamp()), 7)
        occurrences = len(built.agenda.agenda(USER, week).entries)
        rcu, items_read = built.agenda_reader.consumed, built.agenda_reader.items_read
        all_rcu = _all_events_rcu(stack, [c["calendar_id"] for c in sim.calendars(USER)])

        session = requests.Session()
        url = f"{stack.api_url}/v1/users/{USER}/agenda"
        for _ in range(10):  # warm the function's container
            session.get(
                url, params={"from": monday.isoformat(), "to": (monday + timedelta(days=7)).isoformat()}, timeout=30
            )
        latencies: list[float] = []
        for n in range(REQUESTS):
            start = monday + timedelta(weeks=n % 21 - 8)
            params = {"from": start.isoformat(), "to": (start + timedelta(days=7)).isoformat()}
            began = time.perf_counter()
            reply = session.get(url, params=params, timeout=30)
            latencies.append((time.perf_counter() - began) * 1000)
            if reply.status_code != 200:
                raise RuntimeError(f"agenda route answered {reply.status_code}: {reply.text}")
    return [
        Entry("agenda_week_rcu", rcu, "RCU", target=25),
        Entry("agenda_all_events_rcu", all_rcu, "RCU"),
        Entry("agenda_week_rcu_ratio_vs_all_events", rcu / all_rcu, "ratio", target=0.05),
        Entry("agenda_week_items_read", items_read, "items"),
        Entry("agenda_week_occurrences", occurrences, "occurrences"),
        Entry("agenda_week_ms_p50", percentile(latencies, 0.5), "ms"),
        Entry("agenda_week_ms", percentile(latencies, 0.99), "ms", target=100),
    ]
