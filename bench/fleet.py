"""The fleet at scale, with the real engine in virtual time (``bench.fleet_world``), cross-checked in real time.

1. **Forced sweep of 10,000 users** (``bench.population``: calendars per user long-tailed, org-wide
   calendars, 5 users with 1,000 calendars). The fleet is onboarded and mirrored first; 25 hours later
   every access token has expired (2 h), every listing is stale (6 h) and every subscription is due for
   renewal (24 h), and the scheduled resync sweeps everyone: its real selection, claims and fan-out,
   then each user's real sync (token refresh, calendar list, an event listing per calendar, subscription
   renewals) through the real per-API rate gate against the simulator's own limits. The floor is the
   busiest API's calls at Feishu's 1,000/min.
2. **First sync of 1,000 calendars** with events, subscriptions included, at Feishu's answer times: the
   time until the user is mirrored ÷ the floor (its 1,000 event listings at 1,000/min).
3. **Push freshness while 5 users with 1,000 calendars each onboard**: ordinary users' pushes (a change,
   the push, the callback's dispatch) until the mirror has the change; the chart ``docs/fleet-freshness.png``.
4. **Real-time cross-check** of a small configuration on DynamoDB Local: the same users synced by the same
   code on the real DynamoDB adapters must make the same Feishu calls and mirror the same items as in the
   virtual fleet; its capacity units (``ReturnConsumedCapacity`` on every request) give the write and
   read units per changed item and per sync.
5. **Cost** per 1,000 users a month, from the measured counts, against a design that polls every 5 min.

Events per calendar in the fleet's Feishu are capped (``SWEEP_EVENTS_CAP``): a sweep of a mirrored fleet
lists only changes, one call per calendar whatever it holds, so the full counts matter only for storage,
which ``shared_calendar_duplication`` and the cost take from the population itself.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import fleet_cost
from bench.common import Entry, percentile
from bench.fleet_crosscheck import measured as cross_check
from bench.fleet_world import FEISHU_PER_MINUTE, FleetWorld, template_default
from bench.freshness_chart import FreshnessSeries, draw
from bench.population import ORG_CALENDARS, Population, big_users_joining, make_population
from local.lambda_model import Invocation
from local.template import rate_seconds

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "docs" / "fleet-freshness.png"
SWEEP_USERS = int(os.environ.get("FLEET_USERS", "10000"))  # fewer while working on the benchmark
SWEEP_EVENTS_CAP = 0
SWEEP_AFTER = 25 * 3600.0  # tokens expired, listings stale, subscriptions due
SWEEP_WINDOW = 4 * 3600.0
ONBOARDING_WINDOW = 3 * 3600.0  # the fleet's first syncs, before the sweep
FRESHNESS_USERS = 300
BIG_USERS = 5
PUSH_EVERY = 2.0  # seconds between pushes to ordinary users, fleet-wide
PUSH_WINDOW = 1800.0
RESYNC_FIRST = 30.0  # the resync's schedule is not aligned with a sign-in
BEFORE_RESERVED_CONCURRENCY = 5  # the earlier template default, for the chart's comparison


def _log(message: str) -> None:
    print(f"  fleet: {message}", file=sys.stderr, flush=True)


def _capped(population: Population, cap: int) -> Population:
    for source in population.sources.values():
        source.count = min(source.count, cap)
    return population


def resync_period() -> float:
    """The template's ``ResyncSchedule``, in seconds."""
    return float(rate_seconds(str(template_default("ResyncSchedule"))))


def _onboard(world: FleetWorld, open_ids: list[str], *, settle: float) -> None:
    """Authorise the users now and let the resync mirror them (first syncs), for ``settle`` seconds."""
    start = world.clock.now
    world.authorize(open_ids)
    world.schedule_resync(start + 1.0, start + settle, resync_period())
    world.run(until=start + settle)


def floor_seconds(calls: Counter[str]) -> float:
    """Feishu's floor for these calls: the busiest API's calls at 1,000 a minute (each API has its budget)."""
    return max(calls.values(), default=0) / FEISHU_PER_MINUTE * 60


def _calls_since(world: FleetWorld, since: float) -> tuple[Counter[str], int, int]:
    """Calls per API answered since ``since`` (virtual seconds), 429s, and calls of org-wide calendars."""
    epoch = world.clock.time() - world.clock.now
    log = [r for r in world.sim.requests_log if r.time - epoch >= since]
    org = sum(1 for r in log if "feishu.cn_org_" in r.path and r.fault != "rate_limit")
    return Counter(r.api for r in log if r.fault != "rate_limit"), sum(1 for r in log if r.fault == "rate_limit"), org


def _synced(invocation: Invocation) -> bool:
    return invocation.outcome == "ok" and invocation.result["result"].outcome == "synced"


@dataclass
class SweepMeasured:
    """What the sweep measured for the cost model."""

    resync: fleet_cost.PerSync
    poll_share: float  # of a resync's calls and time, the share a relisting needs (no refresh, no renewals)
    cold_start_fraction: float
    events_per_user: float  # stored event items per user, from the population's full event counts


def sweep(users: int = SWEEP_USERS) -> tuple[list[Entry], SweepMeasured]:
    """A forced sweep of ``users`` mirrored users (see the module docstring)."""
    started = time.perf_counter()
    full = make_population(users, big_users=max(1, users * 5 // SWEEP_USERS))
    stats = full.stats()
    population = _capped(full, SWEEP_EVENTS_CAP)
    world = FleetWorld.build()
    world.load(population)
    _onboard(world, [u.open_id for u in population.users], settle=ONBOARDING_WINDOW)
    synced = {r.open_id for r in world.results() if r.outcome == "synced"}
    _log(f"{len(synced)} of {users} users mirrored ({time.perf_counter() - started:.0f} s)")
    world.run(until=SWEEP_AFTER)  # nothing runs meanwhile: no resync is scheduled until the sweep
    begin = world.clock.now
    world.schedule_resync(begin, begin + SWEEP_WINDOW, resync_period())
    world.run(until=begin + SWEEP_WINDOW)
    invocations = [i for i in world.sync_function.stats.invocations if i.queued_at >= begin and i.ended_at]
    results = [i.result["result"] for i in invocations if i.outcome == "ok"]
    per_user = Counter(r.open_id for r in results if r.outcome == "synced")
    finished = max(i.ended_at or 0.0 for i in invocations if _synced(i)) - begin
    calls, refused, org_calls = _calls_since(world, begin)
    floor = floor_seconds(calls)
    total = sum(calls.values())
    _log(f"sweep: {total} calls, {finished:.0f} s, floor {floor:.0f} s ({time.perf_counter() - started:.0f} s)")
    relisting = sum(n for api, n in calls.items() if "subscription" not in api and "oauth" not in api)
    org_listed = sum(1 for u in population.users for c in u.readable if c.org is not None)
    org_calendars = len(ORG_CALENDARS)
    entries = [
        Entry("fleet_sweep_feishu_calls", total, "calls", floor=float(users)),
        *(Entry(f"fleet_sweep_feishu_calls_{_short(api)}", n, "calls") for api, n in sorted(calls.items())),
        Entry("fleet_sweep_users_synced", len(per_user), "users", target=users, floor=users, better="higher"),
        Entry("fleet_sweep_time_to_finish", finished, "s", floor=floor),
        Entry("fleet_sweep_ratio_vs_floor", finished / floor, "ratio", target=1.1, floor=1.0),
        Entry("fleet_sweep_responses_429", refused, "responses", target=0, floor=0),
        Entry("fleet_sweep_duplicate_syncs", sum(n - 1 for n in per_user.values()), "syncs", target=0, floor=0),
        Entry("fleet_sweep_busy_skips", sum(1 for r in results if r.outcome == "busy"), "invocations"),
        Entry("fleet_sweep_lapsed_claims_skipped", sum(1 for r in results if r.outcome == "not_due"), "syncs"),
        Entry("fleet_sweep_interrupted_syncs", sum(1 for r in results if r.outcome == "interrupted"), "syncs"),
        Entry("fleet_sweep_lambda_throttles", world.sync_function.stats.throttled_attempts, "attempts"),
        Entry("fleet_sweep_lambda_timeouts", sum(1 for i in invocations if i.outcome == "timeout"), "invocations"),
        Entry(
            "shared_calendar_duplication",
            (stats["org_event_items"] - sum(o.events for o in ORG_CALENDARS)) / stats["event_items"],
            "share of stored event items",
        ),
        Entry(
            "shared_calendar_duplication_calls",
            (org_calls - 2 * org_calendars) / total,
            "share of sweep calls",
        ),
        Entry("fleet_org_calendar_subscriptions_per_user", org_listed / users, "calendars"),
    ]
    seconds = statistics.fmean(i.billed_seconds for i in invocations)
    measured = SweepMeasured(
        resync=fleet_cost.PerSync(seconds, total / users, 0.0, 0.0),
        poll_share=relisting / total,
        cold_start_fraction=world.sync_function.stats.cold_starts / max(1, len(world.sync_function.stats.invocations)),
        events_per_user=stats["event_items"] / users,
    )
    return entries, measured


def _short(api: str) -> str:
    method, path = api.split(" ", 1)
    tail = path.removeprefix("/open-apis/").replace("/:calendar_id", "").replace("/", "_")
    return f"{method.lower()}_{tail}"


def first_sync_1000() -> list[Entry]:
    """One user with 1,000 readable calendars signs in: time until mirrored ÷ the floor."""
    population = big_users_joining(1)
    world = FleetWorld.build()
    world.load(population)
    open_id = population.users[0].open_id
    world.authorize([open_id])
    world.sign_in_at(0.0, [open_id])
    world.schedule_resync(RESYNC_FIRST, 3600.0, resync_period())
    world.run(until=3600.0)
    mirrored_at = min(i.ended_at or 0.0 for i in world.sync_function.stats.invocations if _synced(i))
    calls, refused, _ = _calls_since(world, 0.0)
    floor = floor_seconds(calls)
    invocations = [i for i in world.sync_function.stats.invocations if (i.ended_at or 0) <= mirrored_at]
    return [
        Entry("first_sync_1000_calendars_time_to_mirror", mirrored_at, "s", floor=floor),
        Entry("first_sync_1000_calendars_ratio_vs_floor", mirrored_at / floor, "ratio", target=1.1, floor=1.0),
        Entry("first_sync_1000_calendars_feishu_calls", sum(calls.values()), "calls"),
        Entry("first_sync_1000_calendars_invocations", len(invocations), "invocations", floor=1),
        Entry("first_sync_1000_calendars_responses_429", refused, "responses", target=0, floor=0),
    ]


@dataclass
class Freshness:
    """One freshness run: its figures' inputs."""

    lags: list[tuple[float, float]]  # (push time since the big users signed in, push → mirror)
    onboarding: list[tuple[float, float]]
    unmirrored: int
    push: fleet_cost.PerSync


def freshness(reserved_concurrency: int | None = None) -> Freshness:
    """Ordinary users' pushes while 5 users with 1,000 calendars onboard: push → mirror for each push."""
    ordinary = _capped(make_population(FRESHNESS_USERS, big_users=0, heavy_calendars=0, seed=61), SWEEP_EVENTS_CAP)
    big = big_users_joining(BIG_USERS)
    world = FleetWorld.build(reserved_concurrency=reserved_concurrency)
    world.load(ordinary)
    _onboard(world, [u.open_id for u in ordinary.users], settle=3600.0)
    begin = world.clock.now
    world.load_users(big, big.users)
    big_ids = [u.open_id for u in big.users]
    world.authorize(big_ids)
    world.sign_in_at(begin, big_ids)
    rng = random.Random(16)
    at = begin + 5.0
    while at < begin + PUSH_WINDOW:
        user = rng.choice(ordinary.users)
        world.push_at(at, user.open_id, user.calendars[0].calendar_id)
        at += rng.expovariate(1 / PUSH_EVERY)
    world.schedule_resync(begin + RESYNC_FIRST, begin + PUSH_WINDOW + 3600.0, resync_period())
    world.run(until=begin + PUSH_WINDOW + 3600.0)
    invocations = [i for i in world.sync_function.stats.invocations if i.queued_at >= begin]
    onboarding = []
    for open_id in big_ids:
        own = [i for i in invocations if i.payload["open_id"] == open_id]
        onboarding.append(
            (min(i.slot_at for i in own) - begin, max(i.ended_at or 0.0 for i in own if _synced(i)) - begin)
        )
    pushed = [i for i in invocations if i.payload["reason"] == "push" and _synced(i)]
    push = fleet_cost.PerSync(
        statistics.fmean(i.billed_seconds for i in pushed),
        statistics.fmean(1 + i.result["result"].pages + i.result["result"].event_pages for i in pushed),
        0.0,
        0.0,
    )
    return Freshness(
        [(p.at - begin, (p.mirrored_at or world.clock.now) - p.at) for p in world.pushes],
        onboarding,
        sum(1 for p in world.pushes if p.mirrored_at is None),
        push,
    )


def _freshness_entries(run: Freshness) -> list[Entry]:
    values = [lag for _, lag in run.lags]
    return [
        Entry("fleet_push_freshness_p95_s", percentile(values, 0.95), "s", target=10.0, floor=0.4),
        Entry("fleet_push_freshness_max_s", max(values), "s", floor=0.4),
        Entry("fleet_push_freshness_pushes", len(values), "pushes"),
        Entry("fleet_push_unmirrored", run.unmirrored, "pushes", target=0, floor=0),
        Entry("fleet_big_users_onboarded_max_s", max(end for _, end in run.onboarding), "s"),
    ]


SHARED_DOC = ROOT / "docs" / "shared-calendars.md"
DUPLICATION_START, DUPLICATION_END = "<!-- duplication:start -->", "<!-- duplication:end -->"


def write_duplication(entries: list[Entry], users: int) -> None:
    """The shared-calendars proposal's paragraph on what duplication costs, from this run's figures."""
    value = {e.name: e.value for e in entries}
    paragraph = (
        f"In the fleet benchmark's population ({users:,} users, `bench/population.py`), a user has "
        f"{value['fleet_org_calendar_subscriptions_per_user']:.1f} org-wide calendars in their list on average. "
        f"{value['shared_calendar_duplication']:.0%} of the event items the mirror stores are extra copies of "
        f"org-wide calendars (one per subscriber who may read them), and "
        f"{value['shared_calendar_duplication_calls']:.0%} of a forced sweep's Feishu calls list or re-subscribe "
        "those copies (`shared_calendar_duplication`, `shared_calendar_duplication_calls` in the README's "
        "benchmark table). "
        + (
            "It dominates: listing each org-wide calendar once per access level would remove most of the work."
            if value["shared_calendar_duplication"] > 0.5
            else "A large share, but not a dominant one: users' own calendars are most of the work."
        )
    )
    text = SHARED_DOC.read_text()
    if DUPLICATION_START in text and DUPLICATION_END in text:
        head, rest = text.split(DUPLICATION_START, 1)
        tail = rest.split(DUPLICATION_END, 1)[1]
        SHARED_DOC.write_text(f"{head}{DUPLICATION_START}\n{paragraph}\n{DUPLICATION_END}{tail}")


def fleet() -> list[Entry]:
    """Every fleet figure (see the module docstring), the chart, and the cost per 1,000 users."""
    entries = first_sync_1000()
    _log("first sync of 1,000 calendars done")
    now = freshness()
    before = freshness(BEFORE_RESERVED_CONCURRENCY)
    reserved = int(template_default("SyncReservedConcurrency"))
    draw(
        CHART,
        [
            FreshnessSeries(f"SyncReservedConcurrency {BEFORE_RESERVED_CONCURRENCY} (before)", before.lags, "#7f8c8d"),
            FreshnessSeries(f"SyncReservedConcurrency {reserved} (now)", now.lags, "#2471a3"),
        ],
        onboarding=now.onboarding,
        target=10.0,
        title=f"Push → mirror while {BIG_USERS} users with 1,000 calendars each onboard ({FRESHNESS_USERS} ordinary users)",
    )
    entries += _freshness_entries(now)
    entries.append(
        Entry(
            f"fleet_push_freshness_p95_s_at_{BEFORE_RESERVED_CONCURRENCY}_slots",
            percentile([lag for _, lag in before.lags], 0.95),
            "s",
        )
    )
    _log("push freshness done")
    checked, units = cross_check()
    entries += checked
    _log("cross-check on DynamoDB Local done")
    swept, measured = sweep()
    entries += swept
    write_duplication(swept, SWEEP_USERS)
    resync = fleet_cost.PerSync(
        measured.resync.seconds, measured.resync.calls, units["resync_wcu"], units["resync_rcu"]
    )
    share = measured.poll_share
    costs = fleet_cost.Measured(
        push=fleet_cost.PerSync(now.push.seconds, now.push.calls, units["push_sync_wcu"], units["push_sync_rcu"]),
        resync=resync,
        poll=fleet_cost.PerSync(resync.seconds * share, resync.calls * share, resync.wcu, resync.rcu),
        changed_per_push_sync=units["changed_per_push_sync"],
        cold_start_fraction=measured.cold_start_fraction,
        events_per_user=measured.events_per_user,
    )
    ours, polling = fleet_cost.ours(costs), fleet_cost.polling(costs)
    return [
        *entries,
        Entry("cost_per_1000_users_month_usd", ours, "USD"),
        Entry("cost_polling_per_1000_users_month_usd", polling, "USD"),
        Entry("cost_ratio_vs_polling", ours / polling, "ratio", target=0.1),
    ]
