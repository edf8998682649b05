"""What every benchmark shares: result entries, percentiles, the simulator-backed local stack."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from local.feishu_sim import FeishuSimulator
from local.run import WARM_EVENTS
from local.stack import LocalStack


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
