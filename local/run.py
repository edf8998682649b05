"""``make run`` / ``make demo``: the whole app on 127.0.0.1, shown working.

With the simulator (the default): onboards a demo user through the real OAuth flow, shows the mirror
filling, changes calendars in the simulator, which pushes encrypted and signed events like Feishu, and
shows the mirror following — including an expired sync token. ``--demo`` then exits (status 1 if the
mirror ever disagrees with Feishu); without it the app keeps serving, schedule included, until Ctrl-C.

With ``FEISHU_APP_ID`` and ``FEISHU_APP_SECRET`` in the environment (and no ``--demo``), the app talks
to the real Feishu instead and prints the onboarding URL to open in a browser; its callback accepts
events only with ``FEISHU_ENCRYPT_KEY`` and ``FEISHU_VERIFICATION_TOKEN`` set too.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time as clock
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import requests

from feishu_mirror.dynamodb.mirror import calendar_key
from feishu_mirror.dynamodb.values import attribute_values, plain
from feishu_mirror.models import CALENDAR_FIELDS, EVENT_FIELDS
from local.feishu_sim import FeishuSimulator
from local.stack import LocalStack

DEMO_USER = "ou_demo_ada"
# Harmless first invocations that make each emulator initialise Python before the demo needs it.
WARM_EVENTS = {
    "CallbackFunction": {"headers": {}, "body": ""},
    "SyncFunction": {},
    "PublisherFunction": {"Records": []},
    "OAuthFunction": {
        "version": "2.0",
        "rawPath": "/warm-up",
        "headers": {},
        "requestContext": {"http": {"method": "GET", "path": "/warm-up"}, "stage": "$default"},
    },
    "StatusFunction": {
        "version": "2.0",
        "rawPath": "/warm-up",
        "headers": {},
        "requestContext": {"http": {"method": "GET", "path": "/warm-up"}, "stage": "$default"},
    },
    "AgendaFunction": {
        "version": "2.0",
        "rawPath": "/warm-up",
        "headers": {},
        "requestContext": {"http": {"method": "GET", "path": "/warm-up"}, "stage": "$default"},
    },
}
DEMO_ZONE = "Asia/Shanghai"
CREDENTIAL_NAMES = ("FEISHU_APP_ID", "FEISHU_APP_SECRET", "FEISHU_ENCRYPT_KEY", "FEISHU_VERIFICATION_TOKEN")


def say(text: str = "") -> None:
    """Print a line of the demo's narration."""
    print(text, flush=True)


class Demo:
    """The scripted walk through the app; every check compares the mirror with Feishu's truth."""

    def __init__(self, stack: LocalStack, sim: FeishuSimulator) -> None:
        self.stack = stack
        self.sim = sim
        self.table = stack.template.table_names["CalendarsTable"]
        self.mismatches = 0

    def mirror(self, open_id: str) -> dict[str, dict[str, Any]]:
        """The user's live calendars in DynamoDB."""
        pages = (
            self.stack.client()
            .get_paginator("query")
            .paginate(
                TableName=self.table,
                KeyConditionExpression="open_id = :o",
                ExpressionAttributeValues=attribute_values({":o": open_id}),
                ConsistentRead=True,
            )
        )
        items = [plain(item) for page in pages for item in page["Items"]]
        return {item["calendar_id"]: item for item in items if "deleted_at" not in item}

    def user(self, open_id: str) -> dict[str, Any]:
        """The user's item in the users table."""
        item = (
            self.stack.client()
            .get_item(TableName=self.stack.template.table_names["UsersTable"], Key={"open_id": {"S": open_id}})
            .get("Item", {})
        )
        return plain(item)

    def check(self, open_id: str, step: str) -> None:
        """Print the mirror and whether it equals Feishu's list, field by field."""
        truth = {
            c["calendar_id"]: {k: v for k, v in c.items() if k in CALENDAR_FIELDS} for c in self.sim.calendars(open_id)
        }
        mirror = self.mirror(open_id)
        mirrored = {cid: {k: v for k, v in item.items() if k in CALENDAR_FIELDS} for cid, item in mirror.items()}
        for cid, fields in sorted(mirrored.items(), key=lambda kv: str(kv[1].get("summary"))):
            say(
                f"    {fields.get('summary', '')!s:<24} {fields.get('type', '')!s:<8} {fields.get('role', '')!s:<7} {cid}"
            )
        if mirrored == truth:
            say(f"  ✓ {step}: the mirror matches Feishu ({len(truth)} calendars)")
        else:
            self.mismatches += 1
            say(f"  ✗ {step}: the mirror differs from Feishu")
            say(f"      Feishu: {sorted(truth)}")
            say(f"      mirror: {sorted(mirrored)}")

    def check_events(self, open_id: str, calendar_ids: list[str], step: str) -> None:
        """Print each calendar's mirrored events and whether they equal Feishu's, field by field."""
        for calendar_id in calendar_ids:
            truth = {
                e["event_id"]: {k: v for k, v in e.items() if k in EVENT_FIELDS}
                for e in self.sim.events(open_id, calendar_id)
            }
            items = self.stack.client().query(
                TableName=self.stack.template.table_names["EventsTable"],
                KeyConditionExpression="calendar_key = :k",
                ExpressionAttributeValues=attribute_values({":k": calendar_key(open_id, calendar_id)}),
                ConsistentRead=True,
            )["Items"]
            mirrored = {
                item["event_id"]: {k: v for k, v in item.items() if k in EVENT_FIELDS}
                for item in map(plain, items)
                if "deleted_at" not in item
            }
            for fields in sorted(mirrored.values(), key=lambda f: str(f.get("summary"))):
                say(f"    {fields.get('summary', '')!s:<28} {_local_time(fields.get('start_time'))}")
            if mirrored == truth:
                say(f"  ✓ {step}: the events mirror matches Feishu ({len(truth)} events, {calendar_id[:24]}…)")
            else:
                self.mismatches += 1
                say(f"  ✗ {step}: the events of {calendar_id} differ from Feishu")

    def show_agenda(self) -> None:
        """Print the demo user's coming week from the read route, recurring events expanded."""
        query = _coming_week()
        say(f"\n6. Ada's coming week from the read route GET /v1/users/{DEMO_USER}/agenda (IAM-signed in the cloud):")
        reply = requests.get(f"{self.stack.api_url}/v1/users/{DEMO_USER}/agenda", params=query, timeout=30)
        if reply.status_code != 200:
            self.mismatches += 1
            say(f"  ✗ {reply.status_code} {reply.text}")
            return
        occurrences = reply.json()["occurrences"]
        for entry in occurrences:
            series = "  ↻ " if entry["recurring_event_id"] else "    "
            say(f"  {series}{_span(entry):<44} {entry['summary']}")
        expanded = [entry for entry in occurrences if entry["recurring_event_id"]]
        ok = len({entry["event_id"] for entry in expanded}) >= 2
        self.mismatches += not ok
        say(f"  {'✓' if ok else '✗'} {len(occurrences)} occurrences, {len(expanded)} of them from recurring events (↻)")

    def settle(self) -> None:
        """Wait until Feishu's pushes were answered and every sync has finished."""
        self.sim.wait_for_pushes(30)
        self.stack.wait_idle(60)

    def run(self) -> bool:
        """The walk-through; returns True when every check passed."""
        api = self.stack.api_url
        say("\n1. Feishu checks the event URL (url_verification, encrypted):")
        reply = self.sim.push_url_verification("demo-challenge", callback_url=f"{api}/feishu/events")
        say(f"  → {reply.status_code} {reply.text}")
        self.mismatches += reply.json() != {"challenge": "demo-challenge"}

        say("\n2. Ada signs in through /oauth/start (PKCE, consent, code exchange, subscription):")
        self.sim.add_user(DEMO_USER, "Ada Lovelace")
        for summary, kind in (("Team standup", "shared"), ("Meeting room 3F", "resource"), ("Holidays", "google")):
            self.sim.create_calendar(
                DEMO_USER, summary=summary, type=kind, is_third_party=kind == "google", role="reader"
            )
        self.sim.set_consent_user(DEMO_USER)
        page = requests.get(f"{api}/oauth/start", timeout=30)
        say(f"  → {page.status_code} “{_title(page.text)}”; subscribed to changes: {self.sim.is_subscribed(DEMO_USER)}")
        self.settle()
        self.check(DEMO_USER, "first full sync")

        say("\n3. Ada changes her calendars; Feishu pushes encrypted, signed calendar.calendar.changed_v4 events:")
        ids = {c["summary"]: c["calendar_id"] for c in self.sim.calendars(DEMO_USER)}
        self.sim.create_calendar(DEMO_USER, summary="Launch plan", description="Q3", color=-14613108, role="owner")
        self.sim.update_calendar(DEMO_USER, ids["Team standup"], summary="Team standup (daily)", permissions="public")
        self.sim.delete_calendar(DEMO_USER, ids["Meeting room 3F"])
        self.settle()
        answered = [d.status for d in self.sim.deliveries if d.event_type == "calendar.calendar.changed_v4"]
        say(f"  pushes answered: {answered}")
        self.check(DEMO_USER, "incremental sync")

        say("\n4. Ada's events (日程) change; Feishu pushes calendar.calendar.event.changed_v4 for each:")
        primary = self.sim.primary_calendar_id(DEMO_USER)
        notes = self.sim.create_event(
            DEMO_USER, primary, summary="Analytical Engine notes", location={"name": "London"}
        )
        self.sim.create_event(
            DEMO_USER,
            ids["Team standup"],
            summary="Standup",
            recurrence="FREQ=DAILY",
            **_times(_next_monday(-28, 9, 30), 900),
        )
        self.sim.create_event(
            DEMO_USER,
            primary,
            summary="1:1 with Babbage",
            recurrence="FREQ=WEEKLY;INTERVAL=1;BYDAY=MO,TH",
            location={"name": "Difference Engine room"},
            **_times(_next_monday(-14, 10, 0), 1800),
        )
        tea = self.sim.create_event(DEMO_USER, primary, summary="Tea with Babbage")
        self.settle()
        self.sim.update_event(
            DEMO_USER, primary, notes, start_time={"date": "2026-12-10"}, end_time={"date": "2026-12-11"}
        )
        self.sim.delete_event(DEMO_USER, primary, tea)
        self.settle()
        answered = [d.status for d in self.sim.deliveries if d.event_type == "calendar.calendar.event.changed_v4"]
        say(f"  pushes answered: {answered}")
        self.mismatches += not answered or set(answered) != {200}
        self.check_events(DEMO_USER, [primary, ids["Team standup"]], "event pushes")

        say("\n5. The sync token expires (190008) while a calendar disappears: full listing and sweep:")
        self.sim.expire_sync_tokens(DEMO_USER)
        self.sim.delete_calendar(DEMO_USER, ids["Holidays"])
        self.settle()
        resets = self.user(DEMO_USER).get("full_resync_count", 0)
        say(f"  full resyncs after an expired token so far: {resets}")
        self.mismatches += resets < 1
        self.check(DEMO_USER, "full resync after 190008")

        self.show_agenda()

        say("\n7. The scheduled resync finds nothing due and writes nothing:")
        before = self.mirror(DEMO_USER)
        self.stack.run_schedule("ResyncFunction")
        self.stack.wait_idle(60)
        unchanged = self.mirror(DEMO_USER) == before
        say(f"  {'✓' if unchanged else '✗'} mirror untouched")
        self.mismatches += not unchanged
        published = Counter(event["detail-type"] for event in self.stack.published_changes())
        kinds = ", ".join(f"{kind} ×{n}" for kind, n in sorted(published.items())) or "none"
        say(f"\nChange events on the bus for consumers (DynamoDB Streams → publisher λ → EventBridge): {kinds}")
        failures = len(self.stack.failures)
        say(f"\n{'✓' if not failures else '✗'} failed asynchronous invocations: {failures}")
        return self.mismatches == 0 and failures == 0


def _coming_week() -> dict[str, str]:
    """The agenda route's query for the seven days from today's midnight in the demo's zone."""
    start = datetime.now(ZoneInfo(DEMO_ZONE)).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"from": start.isoformat(), "to": (start + timedelta(days=7)).isoformat(), "tz": DEMO_ZONE}


def _next_monday(days: int, hour: int, minute: int) -> int:
    """Unix seconds of ``hour:minute`` in the demo's zone on the coming Monday, moved by ``days``."""
    today = datetime.now(ZoneInfo(DEMO_ZONE)).date()
    monday = today + timedelta(days=(7 - today.weekday()) % 7 + days)
    return int(datetime.combine(monday, time(hour, minute), ZoneInfo(DEMO_ZONE)).timestamp())


def _times(start: int, seconds: int) -> dict[str, Any]:
    """Feishu's start_time and end_time for a timed event in the demo's zone."""
    return {
        "start_time": {"timestamp": str(start), "timezone": DEMO_ZONE},
        "end_time": {"timestamp": str(start + seconds), "timezone": DEMO_ZONE},
    }


def _local_time(when: Any) -> str:
    """A Feishu start_time as people read it: the date, or the local date and time in its zone."""
    if not isinstance(when, dict):
        return ""
    if when.get("date"):
        return f"{when['date']} (all day)"
    zone = ZoneInfo(when.get("timezone") or "UTC")
    return f"{datetime.fromtimestamp(int(when['timestamp']), zone):%a %Y-%m-%d %H:%M} {zone.key}"


def _span(entry: dict[str, Any]) -> str:
    """An agenda entry's time: ``Mon 2026-12-14 10:00–10:30`` or ``2026-12-10 (all day)``."""
    if entry["all_day"]:
        return f"{entry['start']} (all day)"
    start, end = datetime.fromisoformat(entry["start"]), datetime.fromisoformat(entry["end"])
    return f"{start:%a %Y-%m-%d %H:%M}–{end:%H:%M} {entry['time_zone']}"


def _title(html: str) -> str:
    start = html.find("<h1>")
    return html[start + 4 : html.find("</h1>")] if start >= 0 else html[:60]


@contextmanager
def simulated_app(api_port: int, sim_port: int, schedules: bool) -> Iterator[tuple[LocalStack, FeishuSimulator]]:
    """The simulator plus the local stack pointed at it."""
    with (
        FeishuSimulator(port=sim_port, app_id="cli_local_demo", push_retry_delays=(1, 5, 15, 60)) as sim,
        LocalStack(sim.app_environment(), api_port=api_port, schedules=schedules) as stack,
    ):
        stack.warm(WARM_EVENTS)
        sim.set_callback_url(f"{stack.api_url}/feishu/events")
        yield stack, sim


def serve_forever(stack: LocalStack) -> None:
    """Keep serving until Ctrl-C."""
    say("\nServing until Ctrl-C.")
    try:
        while True:
            clock.sleep(3600)
    except KeyboardInterrupt:
        say("\nStopping.")
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make run`` (interactive) and ``make demo`` (``--demo``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="run the walk-through once and exit with its verdict")
    args = parser.parse_args(argv)
    # `kill` / a CI timeout: unwind normally so every child process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    api_port = int(os.environ.get("LOCAL_API_PORT", "0" if args.demo else "3000"))
    real = bool(os.environ.get("FEISHU_APP_ID") and os.environ.get("FEISHU_APP_SECRET")) and not args.demo
    started = clock.monotonic()
    say("Starting DynamoDB Local, the Lambda emulators and the local API (the first run installs them)…")
    if real:
        env = {name: os.environ.get(name, "") for name in CREDENTIAL_NAMES}
        for name in ("FEISHU_BASE_URL", "FEISHU_ACCOUNTS_URL", "PUBLIC_BASE_URL"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        with LocalStack(env, api_port=api_port, schedules=True) as stack:
            stack.warm(WARM_EVENTS)
            say(
                f"Up in {clock.monotonic() - started:.0f} s, talking to the real Feishu ({env.get('FEISHU_BASE_URL') or 'https://open.feishu.cn'})."
            )
            say(
                f"Open {stack.api_url}/oauth/start in a browser (register {stack.api_url}/oauth/callback as a redirect URL)."
            )
            say(
                "Feishu cannot reach 127.0.0.1 for event pushes: put a tunnel in front and set PUBLIC_BASE_URL, or rely on the schedule."
            )
            unset = [name for name in CREDENTIAL_NAMES[2:] if not env[name]]
            if unset:
                say(f"{' and '.join(unset)} not set: the callback refuses every event (503) until they are.")
            say(f"Status page: {stack.api_url}/status (in the cloud this route is IAM-protected)")
            serve_forever(stack)
        return 0
    sim_port = int(os.environ.get("LOCAL_FEISHU_PORT", "0" if args.demo else "8089"))
    with simulated_app(api_port, sim_port, schedules=not args.demo) as (stack, sim):
        say(
            f"Up in {clock.monotonic() - started:.0f} s: API {stack.api_url} · Feishu simulator {sim.url} · DynamoDB {stack.dynamodb.endpoint if stack.dynamodb else ''}"
        )
        say(f"Status page: {stack.api_url}/status")
        ok = Demo(stack, sim).run()
        say(f"\n{'DEMO PASSED' if ok else 'DEMO FAILED'}")
        if args.demo:
            return 0 if ok else 1
        say("\nTry it yourself:")
        say(f"  curl -s {sim.url}/_sim/users/{DEMO_USER}/calendars                     # Feishu's truth")
        say(
            f'  curl -s -XPOST {sim.url}/_sim/users/{DEMO_USER}/calendars -d \'{{"summary":"Mine"}}\'   # a change; the simulator pushes it'
        )
        agenda_url = f"{stack.api_url}/v1/users/{DEMO_USER}/agenda?{urlencode(_coming_week())}"
        say(f"  curl -s '{agenda_url}'   # the coming week (IAM-signed in the cloud)")
        say(f"  open {stack.api_url}/oauth/start                                          # onboard again")
        say(
            f"  open {stack.api_url}/status                                              # status page (IAM-protected in the cloud)"
        )
        port = stack.api_url.rsplit(":", 1)[1]
        make_port = "" if port == "3000" else f" LOCAL_API_PORT={port}"
        say(
            f"  make resync USER={DEMO_USER}{make_port}                                  # a sync through the status route"
        )
        say(f"  logs: {stack.state / 'logs'}")
        serve_forever(stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
