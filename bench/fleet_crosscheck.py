"""The fleet model against the real thing: a small configuration synced in real time on DynamoDB Local.

The same users (``bench.population``) are synced twice — a first sync, then an incremental one after a
few changes each — by the same engine, once in the virtual fleet (``bench.fleet_world``: in-memory
tables, virtual time) and once on the real DynamoDB adapters against DynamoDB Local in real time (the
Feishu simulator answering in-process at once). Both must make the same Feishu calls per API and mirror
the same items, or the model has drifted from the code.

The real run also meters DynamoDB as AWS bills it: every request of every table asks for
``ReturnConsumedCapacity``. DynamoDB Local reports single-item requests, queries and batches as AWS
does, but not transactions (``local.dynamodb_capacity``), so a transaction's units are counted from its
items: each action twice the units of its item (a ``ConditionCheck`` of the item it checks), plus the
index entries a ``Put`` adds.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import Entry, fresh_tables
from bench.fleet_world import FleetWorld, quiet_powertools
from bench.population import Population, make_population
from feishu_mirror import composition
from feishu_mirror.composition import FeishuApp, GivenClients
from feishu_mirror.config import FeishuCredentials
from feishu_mirror.dynamodb.values import plain
from feishu_mirror.models import SyncResult, TokenGrant, UserIdentity
from feishu_mirror.sync import lease_owner
from local.dynamodb_capacity import Index, write_units
from local.dynamodb_local import DynamoDBLocal
from local.feishu_sim import FeishuSimulator
from tests.fakes import FakeDataKeys, RecordingInvoker

if TYPE_CHECKING:
    from feishu_mirror.composition import Services

ROOT = Path(__file__).resolve().parent.parent
USERS = 40
EVENTS_CAP = 4
CHANGES_PER_USER = 3


class CapacityMeter:
    """Adds up the capacity units of every DynamoDB request a client sends (see the module docstring);
    ``sizing`` is another client, to read the items a transaction checks or changes without counting it."""

    def __init__(self, client: Any, sizing: Any) -> None:
        self._sizing = sizing
        self._lock = threading.Lock()
        self.writes: defaultdict[str, float] = defaultdict(float)  # write units per table
        self.read_units = 0.0
        self.requests: Counter[str] = Counter()
        self._indexes: dict[str, list[Index]] = {}
        events = client.meta.events
        events.register("before-parameter-build.dynamodb", self._ask)
        events.register("after-call.dynamodb", self._count)

    def _ask(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        context["metered_table"] = params.get("TableName", "")
        if model.name == "TransactWriteItems":
            context["metered_items"] = list(params["TransactItems"])
        elif "ReturnConsumedCapacity" in model.input_shape.members:
            params.setdefault("ReturnConsumedCapacity", "INDEXES")

    def _count(self, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        name = model.name
        with self._lock:
            self.requests[name] += 1
        if name == "TransactWriteItems":
            self._transaction(context.get("metered_items", []))
            return
        consumed = parsed.get("ConsumedCapacity")
        entries = consumed if isinstance(consumed, list) else [consumed] if consumed else []
        units = sum(float(e.get("CapacityUnits") or 0) for e in entries)
        with self._lock:
            if name in ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"):
                self.writes[context.get("metered_table", "")] += units
            else:
                self.read_units += units

    @property
    def write_units(self) -> float:
        """Every table's write units."""
        return float(sum(self.writes.values()))

    def _transaction(self, items: list[dict[str, Any]]) -> None:
        units: Counter[str] = Counter()
        for entry in items:
            ((action, request),) = entry.items()
            table = request["TableName"]
            if action == "Put":
                item = plain(request["Item"])
                units[table] += write_units(None, item, transactional=True)
                units[table] += sum(index.write_units(None, item) for index in self._index(table))
            else:
                stored = self._sizing.get_item(TableName=table, Key=request["Key"]).get("Item")
                units[table] += write_units(plain(stored) if stored else None, None, transactional=True)
        with self._lock:
            for table, table_units in units.items():
                self.writes[table] += table_units

    def _index(self, table: str) -> list[Index]:
        if table not in self._indexes:
            described = self._sizing.describe_table(TableName=table)["Table"]
            keys = tuple(k["AttributeName"] for k in described["KeySchema"])
            self._indexes[table] = [
                Index(
                    g["IndexName"],
                    tuple(k["AttributeName"] for k in g["KeySchema"]),
                    tuple(g["Projection"].get("NonKeyAttributes", ())),
                    keys,
                )
                for g in described.get("GlobalSecondaryIndexes", [])
            ]
        return self._indexes[table]


def _population() -> Population:
    population = make_population(USERS, big_users=0, heavy_calendars=0, seed=77)
    for source in population.sources.values():
        source.count = min(source.count, EVENTS_CAP)
    return population


def _changes(sim: FeishuSimulator, population: Population, services: Services) -> int:
    """A few changes per user, the same in both runs: new events on the user's primary calendar, each
    pushed (the callback's dispatch marks the calendar changed)."""
    rng = random.Random(5)
    made = 0
    for user in population.users:
        calendar_id = user.calendars[0].calendar_id
        for _ in range(CHANGES_PER_USER):
            sim.create_event(user.open_id, calendar_id, summary=f"change {rng.randrange(10**6)}")
            made += 1
        services.pings.dispatch([user.open_id], "push", calendar_id=calendar_id)
    return made


def _sync_all(services: Services, open_ids: list[str], monotonic: Callable[[], float]) -> list[SyncResult]:
    return [
        services.sync.sync_user(open_id, owner=lease_owner("check"), deadline=monotonic() + 290, lease_seconds=330)
        for open_id in open_ids
    ]


def _authorize(services: Services, sim: FeishuSimulator, open_ids: list[str], now: int) -> None:
    for open_id in open_ids:
        body = sim.issue_user_tokens(open_id)
        grant = TokenGrant(body["access_token"], now + 7200, body["refresh_token"], now + 604800, body["scope"])
        services.tables.tokens.save_authorization(
            UserIdentity(open_id, open_id), services.vault.seal(open_id, grant), now
        )


@dataclass
class Run:
    """One run of the configuration: Feishu calls per API, the mirrored events, the syncs' results."""

    calls: Counter[str]
    mirrored: Counter[str]  # live events per user and calendar (the simulator names new events at random)
    results: list[SyncResult] = field(default_factory=list)


def _virtual(population: Population) -> Run:
    world = FleetWorld.build(latency=(0.0, 0.0), invoker=RecordingInvoker())
    world.load(population)
    ids = [u.open_id for u in population.users]
    world.authorize(ids)
    results: list[SyncResult] = []

    def twice() -> None:
        results.extend(_sync_all(world.services, ids, world.clock.monotonic))
        _changes(world.sim, population, world.services)
        results.extend(_sync_all(world.services, ids, world.clock.monotonic))

    with world.quiet():
        world.clock.spawn(twice)
        world.clock.run()
    mirrored = Counter(
        f"{c.open_id}/{c.calendar_id}" for c, items in world.events.partitions.items() for s in items.values() if s.live
    )
    return Run(Counter(r.api for r in world.sim.requests_log), mirrored, results)


def _real(population: Population) -> tuple[Run, Units, Units]:
    with DynamoDBLocal(ROOT / ".local" / "dynamodb") as dynamodb:
        client = dynamodb.client()
        settings = fresh_tables(client)
        sim = FeishuSimulator(app_id="cli_fleet")
        population.load_into(sim)
        services = composition.build(
            settings,
            GivenClients(client, RecordingInvoker(), FakeDataKeys()),
            FeishuApp(FeishuCredentials(sim.app_id, sim.app_secret), session=sim.session()),
        )
        ids = [u.open_id for u in population.users]
        _authorize(services, sim, ids, int(time.time()))
        first = _sync_all(services, ids, time.monotonic)
        meter = CapacityMeter(client, dynamodb.client())
        changed = _changes(sim, population, services)
        second = _sync_all(services, ids, time.monotonic)
        scan = client.scan(
            TableName=settings.events_table, ProjectionExpression="open_id, calendar_id, event_id, deleted_at"
        )
        items = scan["Items"]
        while "LastEvaluatedKey" in scan:
            scan = client.scan(
                TableName=settings.events_table,
                ProjectionExpression="open_id, calendar_id, event_id, deleted_at",
                ExclusiveStartKey=scan["LastEvaluatedKey"],
            )
            items += scan["Items"]
        mirrored = Counter(f"{i['open_id']['S']}/{i['calendar_id']['S']}" for i in items if "deleted_at" not in i)
        run = Run(Counter(r.api for r in sim.requests_log), mirrored, first + second)
        pushed = Units(meter.write_units, meter.read_units, changed, len(second), dict(meter.writes))
        # A resync of the mirrored users with nothing changed: every listing stale, each listed again.
        stale = composition.build(
            dataclasses.replace(settings, stale_after_seconds=0),
            GivenClients(client, RecordingInvoker(), FakeDataKeys()),
            FeishuApp(FeishuCredentials(sim.app_id, sim.app_secret), session=sim.session()),
        )
        resynced = _sync_all(stale, ids, time.monotonic)
        quiet = Units(meter.write_units - pushed.write, meter.read_units - pushed.read, 0, len(resynced))
        return run, pushed, quiet


@dataclass(frozen=True, slots=True)
class Units:
    """What a pass of syncs cost in DynamoDB: write and read units, items changed, syncs."""

    write: float
    read: float
    changed: int
    syncs: int
    tables: dict[str, float] = dataclasses.field(default_factory=dict)  # write units per table


def cross_check() -> list[Entry]:
    """Run both, compare, and report the real run's capacity units per changed item and per sync."""
    population = _population()
    virtual = _virtual(population)
    with quiet_powertools():
        real, pushed, quiet = _real(population)
    assert all(r.outcome == "synced" for r in real.results + virtual.results), "a sync of the cross-check failed"
    entries, _ = _entries(virtual, real, pushed, quiet)
    return entries


def measured() -> tuple[list[Entry], dict[str, float]]:
    """``cross_check``'s figures, and the per-sync units the cost model takes (push syncs, quiet resyncs)."""
    population = _population()
    virtual = _virtual(population)
    with quiet_powertools():
        real, pushed, quiet = _real(population)
    return _entries(virtual, real, pushed, quiet)


def _entries(virtual: Run, real: Run, pushed: Units, quiet: Units) -> tuple[list[Entry], dict[str, float]]:
    changed, syncs = pushed.changed, pushed.syncs
    units = {
        "push_sync_wcu": pushed.write / syncs,
        "push_sync_rcu": pushed.read / syncs,
        "changed_per_push_sync": changed / syncs,
        "resync_wcu": quiet.write / quiet.syncs,
        "resync_rcu": quiet.read / quiet.syncs,
    }
    entries = [
        Entry(
            "fleet_model_calls_mismatch",
            sum(((virtual.calls - real.calls) + (real.calls - virtual.calls)).values()),
            "calls",
            target=0,
            floor=0,
        ),
        Entry(
            "fleet_model_items_mismatch",
            sum(((virtual.mirrored - real.mirrored) + (real.mirrored - virtual.mirrored)).values()),
            "items",
            target=0,
            floor=0,
        ),
        Entry("fleet_wcu_per_changed_item", pushed.write / changed, "WCU", target=1.2, floor=1.0),
        *(
            Entry(f"fleet_wcu_per_changed_item_{table.split('-', 1)[-1]}", written / changed, "WCU")
            for table, written in sorted(pushed.tables.items())
        ),
        Entry("fleet_rcu_per_sync", pushed.read / syncs, "RCU"),
        Entry("fleet_resync_no_change_wcu_per_sync", units["resync_wcu"], "WCU"),
        Entry("fleet_resync_no_change_rcu_per_sync", units["resync_rcu"], "RCU"),
    ]
    return entries, units
