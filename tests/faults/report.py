"""Writes the fault suite's figures (from ``.local/fault-report.json``) into the README.

Run by ``make soak`` after the schedules, so the README states what the suite itself counted.
"""

from __future__ import annotations

import json
import sys

from local.stack import ROOT
from tests.readme import rewrite_section

REPORT = ROOT / ".local" / "fault-report.json"
START, END = "<!-- faults:start -->", "<!-- faults:end -->"
EVENT_PREFIX = "event "  # fault kinds aimed at event listings (schedule.py names them so)


def table(header: str, counts: dict[str, int]) -> list[str]:
    """A two-column markdown table, most frequent first (nothing when there is nothing to show)."""
    if not counts:
        return []
    rows = [f"| {kind} | {n} |" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return ["", f"| {header} | times |", "|---|---:|", *rows]


def markdown(report: dict[str, dict[str, int]]) -> str:
    """The README paragraph and tables: faults on the calendar API and on event listings, actions, sync outcomes."""
    converged = report.get("schedules", {}).get("converged", 0)
    faults = report.get("faults", {})
    actions = report.get("actions", {})
    syncs = report.get("syncs", {})
    data = report.get("data", {})
    event_faults = {kind.removeprefix(EVENT_PREFIX): n for kind, n in faults.items() if kind.startswith(EVENT_PREFIX)}
    other_faults = {kind: n for kind, n in faults.items() if not kind.startswith(EVENT_PREFIX)}
    lines = [
        f"{converged} seeded schedules took {sum(actions.values())} actions (changes, pushes, extra syncs), injected {sum(faults.values())} faults and "
        f"ran {sum(syncs.values())} syncs; every schedule converged: the mirror's calendars, and the events of "
        "every calendar whose events the user can read, equalled Feishu field by field; every event of a calendar "
        "that was gone or unreadable was a tombstone; cancelled occurrences of recurring events were live with their "
        "status and no exception outlived its master; every field DynamoDB cannot hold as sent was left out and "
        "named in `mirror_reduced`, for a reason DynamoDB Local confirmed; no refresh token was presented twice; "
        "every user asked to authorise again was asked for a cause the schedule injected (none was locked out), "
        "signed in again and synced; every user ended active with the tokens of their latest consent (also those "
        "who signed in again while a sync ran); no sync token (of a calendar list or of a calendar's events) was "
        "committed before its last page; and Feishu's per-API per-second and per-minute limits were never exceeded."
    ]
    lines += table("fault injected (calendar API, token endpoint)", other_faults)
    lines += table("fault injected into event listings", event_faults)
    lines += table("action", actions)
    lines += table("sync outcome during the schedules", syncs)
    lines += table("data (drawn during the schedules; found in the final mirror)", data)
    return "\n".join(lines)


def main() -> int:
    """Rewrite the README's fault section; fails if there is no report yet."""
    if not REPORT.exists():
        print("no fault report: run the fault schedules first", file=sys.stderr)
        return 1
    rewrite_section(START, END, markdown(json.loads(REPORT.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
