"""What every benchmark shares: result entries, percentiles, the simulator-backed local stack."""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from feishu_mirror import composition
from feishu_mirror.composition import FeishuApp, GivenClients, Services
from feishu_mirror.config import FeishuCredentials, Settings
from local.dynamodb_local import create_tables
from local.feishu_sim import FeishuSimulator
from local.run import WARM_EVENTS
from local.stack import ROOT, LocalStack
from local.template import load

if TYPE_CHECKING:
    import requests

    from feishu_mirror.invoker import SyncInvoker
    from feishu_mirror.token_vault import DataKeys


@dataclass(frozen=True)
class Entry:
    """One figure of ``bench/results.json``: ``met`` is computed against ``target`` by ``better``."""

    name: str
    value: float
    unit: str
    target: float | None = None
    floor: float | None = None
    better: str = "lower"  # "lower": value <= target meets it; "higher": value >= target

    @property
    def met(self) -> bool | None:
        """True/False against the target; None when the figure has no target."""
        if self.target is None:
            return None
        return self.value <= self.target if self.better == "lower" else self.value >= self.target

    def as_dict(self) -> dict[str, Any]:
        """The results-file shape: name, value, unit, target, floor, met."""
        out = asdict(self)
        out.pop("better")
        out["value"] = round(self.value, 4)
        out["met"] = self.met
        return out


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


def machine_load(name: str) -> Entry:
    """The machine's load average over the last 5 minutes, as context for the wall times beside it: on a
    shared machine other work competes for the same cores."""
    return Entry(name, os.getloadavg()[1], f"runnable ({os.cpu_count()} cores)")


def fresh_tables(client: Any, *, events: bool = True, page_size: int = 1000) -> Settings:
    """The template's tables, created afresh under a new prefix, and the settings naming those a sync
    uses (without the events tables when ``events`` is false: the sync then mirrors calendars only)."""
    template = load(ROOT, prefix=f"b{uuid.uuid4().hex[:6]}-")
    create_tables(client, template.tables, template.table_names)
    names = template.table_names
    return Settings(
        users_table=names["UsersTable"],
        calendars_table=names["CalendarsTable"],
        events_table=names["EventsTable"] if events else "",
        event_listings_table=names["EventListingsTable"] if events else "",
        rate_limit_table=names["RateLimitTable"],
        page_size=page_size,
    )


def services(
    client: Any,
    settings: Settings,
    *,
    sim: FeishuSimulator | None = None,
    data_keys: DataKeys | None = None,
    invoker: SyncInvoker | None = None,
    session: requests.Session | None = None,
) -> Services:
    """The services as the functions build them (``composition``), on the benchmark's DynamoDB Local,
    local KMS (``data_keys``) and Feishu simulator (``sim``, over HTTP with ``session`` when given)."""
    app = None
    if sim is not None:
        settings = dataclasses.replace(settings, feishu_base_url=sim.url, feishu_accounts_url=sim.url)
        app = FeishuApp(FeishuCredentials(sim.app_id, sim.app_secret), session=session)
    return composition.build(settings, GivenClients(client, invoker, data_keys), app)


@contextmanager
def simulated_stack(**sim_options: Any) -> Iterator[tuple[LocalStack, FeishuSimulator]]:
    """The local stack, warmed, talking to a fresh simulator (pushes off unless asked).

    The change stream is off: in the cloud the publisher runs beside the path measured here, while on
    a 2-core machine it would compete with it for the same CPU.
    """
    with FeishuSimulator(app_id="cli_bench", **sim_options) as sim:
        env = {**sim.app_environment(), "POWERTOOLS_LOG_LEVEL": "WARNING"}
        with LocalStack(env, prefix="bench-", streams=False) as stack:
            stack.warm(WARM_EVENTS)
            yield stack, sim
