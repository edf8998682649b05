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

import random
import sys
import time
from collections import Counter
from pathlib import Path

from bench.common import Entry, percentile
from bench.fleet_world import FEISHU_PER_MINUTE, FleetWorld
from bench.population import Population, big_users_joining, make_population

ROOT = Path(__file__).resolve().parent.parent
RESERVED = int(__import__("os").environ.get("FLEET_RESERVED", "5"))
SWEEP_USERS = 10_000
SWEEP_EVENTS_CAP = 0
SWEEP_AFTER = 25 * 3600.0  # tokens expired, listings stale, subscriptions due
SWEEP_WINDOW = 4 * 3600.0
ONBOARDING_WINDOW = 3 * 3600.0  # the fleet's first syncs, before the sweep
FRESHNESS_USERS = 300
BIG_USERS = 5
PUSH_EVERY = 2.0  # seconds between pushes to ordinary users, fleet-wide
PUSH_WINDOW = 1800.0


def _log(message: str) -> None:
    print(f"  fleet: {message}", file=sys.stderr, flush=True)


def _capped(population: Population, cap: int) -> Population:
    for source in population.sources.values():
        source.count = min(source.count, cap)
    return population


def _onboard(world: FleetWorld, open_ids: list[str], *, settle: float) -> None:
    """Authorise the users now and let the resync mirror them (first syncs), for ``settle`` seconds."""
    start = world.clock.now
    world.authorize(open_ids)
    world.schedule_resync(start + 1.0, start + settle)
    world.run(until=start + settle)


def floor_seconds(calls: Counter[str]) -> float:
    """Feishu's floor for these calls: the busiest API's calls at 1,000 a minute (each API has its budget)."""
    return max(calls.values(), default=0) / FEISHU_PER_MINUTE * 60


def _calls_since(world: FleetWorld, since: float) -> tuple[Counter[str], int]:
    epoch = world.clock.time() - world.clock.now
    log = [r for r in world.sim.requests_log if r.time - epoch >= since]
    return Counter(r.api for r in log if r.fault != "rate_limit"), sum(1 for r in log if r.fault == "rate_limit")


def sweep(users: int = SWEEP_USERS) -> list[Entry]:
    """A forced sweep of ``users`` mirrored users (see the module docstring)."""
    started = time.perf_counter()
    population = _capped(make_population(users, big_users=max(1, users * 5 // SWEEP_USERS)), SWEEP_EVENTS_CAP)
    world = FleetWorld.build(reserved_concurrency=RESERVED)
    world.load(population)
    _onboard(world, [u.open_id for u in population.users], settle=ONBOARDING_WINDOW)
    synced = {r.open_id for r in world.results() if r.outcome == "synced"}
    _log(f"{len(synced)} of {users} users mirrored ({time.perf_counter() - started:.0f} s)")
    world.run(until=SWEEP_AFTER)  # nothing runs meanwhile: no resync is scheduled until the sweep
    begin = world.clock.now
    world.schedule_resync(begin, begin + SWEEP_WINDOW)
    world.run(until=begin + SWEEP_WINDOW)
    invocations = [i for i in world.sync_function.stats.invocations if i.queued_at >= begin and i.ended_at]
    results = [i.result["result"] for i in invocations if i.outcome == "ok"]
    done = [r for r in results if r.outcome == "synced"]
    per_user = Counter(r.open_id for r in done)
    finished = max(i.ended_at or 0.0 for i in invocations if i.outcome == "ok") - begin
    calls, refused = _calls_since(world, begin)
    floor = floor_seconds(calls)
    _log(
        f"sweep: {sum(calls.values())} calls, {finished:.0f} s, floor {floor:.0f} s ({time.perf_counter() - started:.0f} s)"
    )
    entries = [Entry(f"fleet_sweep_feishu_calls_{_short(api)}", n, "calls") for api, n in sorted(calls.items())]
    return [
        Entry("fleet_sweep_feishu_calls", sum(calls.values()), "calls", floor=float(users)),
        *entries,
        Entry("fleet_sweep_users_synced", len(per_user), "users", target=users, floor=users, better="higher"),
        Entry("fleet_sweep_time_to_finish", finished, "s", floor=floor),
        Entry("fleet_sweep_ratio_vs_floor", finished / floor, "ratio", target=1.1, floor=1.0),
        Entry("fleet_sweep_responses_429", refused, "responses", target=0, floor=0),
        Entry(
            "fleet_sweep_duplicate_syncs",
            sum(n - 1 for n in per_user.values()) + sum(1 for r in results if r.outcome == "busy"),
            "syncs",
            target=0,
            floor=0,
        ),
        Entry("fleet_sweep_interrupted_syncs", sum(1 for r in results if r.outcome == "interrupted"), "syncs"),
        Entry("fleet_sweep_lambda_timeouts", sum(1 for i in invocations if i.outcome == "timeout"), "invocations"),
    ]


def _short(api: str) -> str:
    method, path = api.split(" ", 1)
    tail = path.removeprefix("/open-apis/").replace("/:calendar_id", "").replace("/", "_")
    return f"{method.lower()}_{tail}"


def first_sync_1000() -> list[Entry]:
    """One user with 1,000 readable calendars signs in: time until mirrored ÷ the floor."""
    population = big_users_joining(1)
    world = FleetWorld.build(reserved_concurrency=RESERVED)
    world.load(population)
    open_id = population.users[0].open_id
    world.authorize([open_id])
    world.sign_in_at(0.0, [open_id])
    world.schedule_resync(RESYNC_FIRST, 3 * 3600.0)
    world.run(until=3 * 3600.0)
    done = [
        i for i in world.sync_function.stats.invocations if i.outcome == "ok" and i.result["result"].outcome == "synced"
    ]
    mirrored_at = min(i.ended_at or 0.0 for i in done)
    calls, refused = _calls_since(world, 0.0)
    floor = floor_seconds(calls)
    invocations = [i for i in world.sync_function.stats.invocations if (i.ended_at or 0) <= mirrored_at]
    return [
        Entry("first_sync_1000_calendars_time_to_mirror", mirrored_at, "s", floor=floor),
        Entry("first_sync_1000_calendars_ratio_vs_floor", mirrored_at / floor, "ratio", target=1.1, floor=1.0),
        Entry("first_sync_1000_calendars_invocations", len(invocations), "invocations", floor=1),
        Entry("first_sync_1000_calendars_latency_responses_429", refused, "responses", target=0, floor=0),
    ]


RESYNC_FIRST = 600.0  # the resync's schedule is not aligned with a sign-in


def freshness() -> tuple[list[Entry], list[tuple[float, float]], list[tuple[float, float]]]:
    """Ordinary users' pushes while 5 users with 1,000 calendars onboard: push → mirror, p95 and max."""
    ordinary = _capped(make_population(FRESHNESS_USERS, big_users=0, heavy_calendars=0, seed=61), SWEEP_EVENTS_CAP)
    big = big_users_joining(BIG_USERS)
    world = FleetWorld.build(reserved_concurrency=RESERVED)
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
    world.schedule_resync(begin + RESYNC_FIRST, begin + PUSH_WINDOW + 3600.0)
    world.run(until=begin + PUSH_WINDOW + 3600.0)
    lags = [(p.at - begin, (p.mirrored_at or world.clock.now) - p.at) for p in world.pushes]
    unmirrored = sum(1 for p in world.pushes if p.mirrored_at is None)
    onboarded = [
        (
            min(i.slot_at for i in world.sync_function.stats.invocations if i.payload["open_id"] == open_id) - begin,
            max(
                (i.ended_at or 0.0)
                for i in world.sync_function.stats.invocations
                if i.payload["open_id"] == open_id and i.outcome == "ok" and i.result["result"].outcome == "synced"
            )
            - begin,
        )
        for open_id in big_ids
    ]
    values = [lag for _, lag in lags]
    entries = [
        Entry("fleet_push_freshness_p95_s", percentile(values, 0.95), "s", target=10.0, floor=0.4),
        Entry("fleet_push_freshness_max_s", max(values), "s", floor=0.4),
        Entry("fleet_push_freshness_pushes", len(values), "pushes"),
        Entry("fleet_push_unmirrored", unmirrored, "pushes", target=0, floor=0),
        Entry("fleet_big_onboarding_time_to_mirror_max", max(end for _, end in onboarded), "s"),
    ]
    return entries, lags, onboarded


def fleet() -> list[Entry]:
    """Every fleet figure (see the module docstring)."""
    entries = first_sync_1000()
    _log("first sync done")
    fresh, _lags, _onboarded = freshness()
    _log("freshness done")
    return entries + fresh + sweep()
