"""``make bench``: every benchmark, a table on stdout and ``bench/results.json``.

Each figure is a ratio or a count taken within one run, so a noisy machine moves both sides alike.
Exits 1 (loudly) when any target is missed. ``python -m bench.run callback sync`` runs a subset.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from bench.agenda import agenda_cost
from bench.callback import warm_handling
from bench.cold_start import cold_start
from bench.common import Entry
from bench.event_cost import event_cost
from bench.first_sync import first_sync
from bench.fleet import fleet
from bench.scale import scale
from bench.stack_latency import stack_latency
from bench.sync_cost import sync_cost

RESULTS = Path(__file__).resolve().parent / "results.json"
README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
SUITES: dict[str, Callable[[], list[Entry]]] = {
    "callback": warm_handling,
    "cold": cold_start,
    "sync": sync_cost,
    "events": event_cost,
    "stack": stack_latency,
    "scale": scale,
    "agenda": agenda_cost,
    "first_sync": first_sync,
    "fleet": fleet,
}


def table(entries: list[Entry]) -> str:
    """A plain-text table of the figures."""
    lines = [f"{'benchmark':<42} {'value':>12} {'unit':<10} {'target':>8} {'floor':>8}  met"]
    for e in entries:
        target = "" if e.target is None else f"{e.target:g}"
        floor = "" if e.floor is None else f"{e.floor:g}"
        met = {True: "yes", False: "NO", None: ""}[e.met]
        lines.append(f"{e.name:<42} {e.value:>12.3f} {e.unit:<10} {target:>8} {floor:>8}  {met}")
    return "\n".join(lines)


def markdown(results: list[dict[str, object]]) -> str:
    """The README's benchmark table, from the results file."""
    rows = ["| benchmark | value | unit | target | floor | met |", "|---|---:|---|---:|---:|---|"]
    for r in results:
        met = {True: "✓", False: "✗", None: ""}[r["met"]]  # type: ignore[index]
        cells = [f"{r[k]:g}" if isinstance(r[k], int | float) else "" for k in ("value", "target", "floor")]
        rows.append(f"| `{r['name']}` | {cells[0]} | {r['unit']} | {cells[1]} | {cells[2]} | {met} |")
    return "\n".join(rows)


def update_readme(results: list[dict[str, object]]) -> None:
    """Replace the table between the README's bench markers with the figures of this run."""
    text = README.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        README.write_text(f"{head}{START}\n{markdown(results)}\n{END}{rest.split(END, 1)[1]}")


def main(argv: list[str]) -> int:
    """Run the suites named in ``argv`` (all by default) and write the results file."""
    chosen = argv or list(SUITES)
    entries: list[Entry] = []
    for name in chosen:
        print(f"running {name}…", file=sys.stderr, flush=True)
        entries += SUITES[name]()
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() and argv else []
    merged = {e["name"]: e for e in previous} | {e.name: e.as_dict() for e in entries}
    RESULTS.write_text(json.dumps(list(merged.values()), indent=2, ensure_ascii=False) + "\n")
    update_readme(list(merged.values()))
    print(table(entries))
    missed = [e.name for e in entries if e.met is False]
    if missed:
        print(f"\nTARGETS MISSED: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
