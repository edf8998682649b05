"""The fleet benchmark's chart: push → mirror freshness over time while big users onboard (a PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import percentile


@dataclass(frozen=True, slots=True)
class FreshnessSeries:
    """One run: each push's time (s from the start) and its freshness (s until the mirror had it)."""

    label: str
    pushes: Sequence[tuple[float, float]]
    color: str


def draw(
    path: Path,
    series: Sequence[FreshnessSeries],
    *,
    onboarding: Sequence[tuple[float, float]],
    target: float,
    title: str,
) -> None:
    """Write the chart: every push as a dot, each series' p95 per minute as a line, the big users'
    onboardings as shaded spans, the target as a dashed line."""
    import matplotlib as mpl  # noqa: PLC0415 - a benchmark-only dependency, loaded only to draw

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(10, 5), dpi=110)
    for start, end in onboarding:
        axes.axvspan(start / 60, end / 60, color="#999999", alpha=0.12, linewidth=0)
    for run in series:
        if not run.pushes:
            continue
        times = [t / 60 for t, _ in run.pushes]
        ages = [max(age, 0.05) for _, age in run.pushes]
        axes.scatter(times, ages, s=6, alpha=0.35, color=run.color, linewidths=0)
        minutes: dict[int, list[float]] = {}
        for t, age in run.pushes:
            minutes.setdefault(int(t // 60), []).append(age)
        steps = sorted(minutes)
        p95 = [max(percentile(minutes[m], 0.95), 0.05) for m in steps]
        label = f"{run.label}: p95 {percentile([a for _, a in run.pushes], 0.95):.1f} s, max {max(a for _, a in run.pushes):.0f} s"
        axes.plot([m + 0.5 for m in steps], p95, color=run.color, linewidth=2, label=label)
    axes.axhline(target, color="#c0392b", linestyle="--", linewidth=1, label=f"target p95 ≤ {target:g} s")
    axes.set_yscale("log")
    axes.set_xlabel("minutes since the big users signed in (shaded: their onboarding syncs)")
    axes.set_ylabel("push → mirror (s, log scale)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
