"""The callback fuzzing's figures: counted by the fuzz tests, kept in ``.local/fuzz-report.json``, written
into the README's fuzz section by ``python -m tests.fuzz_report`` (``make soak`` runs it).

Each fuzz test records every input it tried and how it was answered (``TALLY.record``); at the end of
the pytest session ``tests/conftest.py`` merges the tiers that ran into the report file, so the unit
and integration tiers, which ``make test`` runs as separate sessions, each keep their latest figures.
This module imports nothing heavy: every pytest session loads it through the conftest.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.readme import rewrite_section

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / ".local" / "fuzz-report.json"
START, END = "<!-- fuzz:start -->", "<!-- fuzz:end -->"
SCALE_VARIABLE = "FUZZ_EXAMPLES_SCALE"

VERIFIER, HANDLER = "verifier", "handler"
# tier -> (the module whose tests feed it, the README column)
TIERS = {
    VERIFIER: ("tests/unit/test_callback_fuzz.py", "verifier (unit fuzz)"),
    HANDLER: ("tests/integration/test_callback_handler_fuzz.py", "real handler on DynamoDB Local"),
}
# Outcome keys, in the README's order, with their row labels. A rejection or HTTP status not listed
# here is recorded under its number and shown after these.
CALENDAR_CHANGE, EVENT_CHANGE, DUPLICATE = "calendar change", "event change", "duplicate"
IGNORED, CHALLENGE = "ignored", "challenge"
SERVER_ERROR, ESCAPED = "5xx", "escaped exception"
ROWS = {
    CALENDAR_CHANGE: "accepted: calendar-list change (`calendar.calendar.changed_v4`)",
    EVENT_CHANGE: "accepted: event change (`calendar.calendar.event.changed_v4`)",
    DUPLICATE: "accepted: a delivery id (`header.event_id`) seen before, answered from its first delivery",
    IGNORED: "ignored (another event type, schema 1.0, no users)",
    CHALLENGE: "challenge answered",
    "400": "refused 400 (malformed)",
    "401": "refused 401 (signature, timestamp, token)",
    "403": "refused 403 (another app)",
    "409": "409 (redelivery in progress)",
    "413": "refused 413 (body too large)",
    SERVER_ERROR: "**5xx**",
    ESCAPED: "**escaped exceptions**",
}
ALWAYS_SHOWN = (SERVER_ERROR, ESCAPED)  # shown even when zero: they are the point
REFUSALS = ("400", "401", "403", "413")  # bad input turned away (409 is "retry later", not a refusal)
NOT_APPLICABLE = {VERIFIER: {DUPLICATE, "409"}}  # deduplication happens in the handler only


def status_key(status: int) -> str:
    """The outcome key of a refusal or an HTTP status other than an acceptance."""
    return SERVER_ERROR if status >= 500 else str(status)


def scale() -> int:
    """The factor on every fuzz test's example count (``FUZZ_EXAMPLES_SCALE``, default 1)."""
    raw = os.environ.get(SCALE_VARIABLE, "1")
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{SCALE_VARIABLE} must be a positive integer, not {raw!r}") from None
    if value < 1:
        raise SystemExit(f"{SCALE_VARIABLE} must be a positive integer, not {raw!r}")
    return value


class FuzzTally:
    """Inputs tried and their outcomes, per tier, over one pytest session."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Counter[str]] = {}
        self.event_changed: Counter[str] = Counter()
        self.tests: dict[str, set[str]] = {}
        self.failed: dict[str, set[str]] = {}

    def record(self, tier: str, outcome: str, *, event_changed: bool = False) -> None:
        """One input tried by ``tier``'s current test, answered with ``outcome`` (a key of ``ROWS``)."""
        self.outcomes.setdefault(tier, Counter())[outcome] += 1
        if event_changed:
            self.event_changed[tier] += 1
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]  # "<nodeid> (call)"
        self.tests.setdefault(tier, set()).add(test)

    def note_failure(self, nodeid: str) -> None:
        """A test of a fuzz module failed: its tier's figures are not from a passing run."""
        for tier, (module, _) in TIERS.items():
            if nodeid.startswith(module):
                self.failed.setdefault(tier, set()).add(nodeid)

    def tiers(self) -> dict[str, dict[str, Any]]:
        """This session's figures, per tier that tried any input."""
        return {
            tier: {
                "inputs": sum(counts.values()),
                "event_changed_inputs": self.event_changed[tier],
                "outcomes": dict(counts),
                "tests": len(self.tests.get(tier, ())),
                "failed_tests": sorted(self.failed.get(tier, ())),
                "examples_scale": scale(),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            for tier, counts in self.outcomes.items()
        }

    def write(self, path: Path = REPORT) -> None:
        """Merge this session's tiers into the report (the other tiers keep their figures); nothing if no fuzz ran."""
        tiers = self.tiers()
        if not tiers:
            return
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            report = {}
        if not isinstance(report, dict):
            report = {}
        report.update(tiers)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        partial.replace(path)  # whole or not at all, should two sessions finish at once


TALLY = FuzzTally()


# ------------------------------------------------------------------ the README section


def _run(tier: dict[str, Any]) -> str:
    factor = int(tier.get("examples_scale", 1))
    if factor == 1:
        return "default example counts"
    return f"{factor}× the default example counts"


def _cell(tier: str, n: int, key: str) -> str:
    return "—" if not n and key in NOT_APPLICABLE.get(tier, ()) else str(n)


def markdown(report: dict[str, Any]) -> str:
    """The README paragraph and table: inputs tried per tier and how each was answered."""
    tiers = [tier for tier in TIERS if tier in report]
    counts = {tier: Counter(report[tier]["outcomes"]) for tier in tiers}
    keys = [key for key in ROWS if key in ALWAYS_SHOWN or any(counts[t][key] for t in tiers)]
    keys += sorted({key for t in tiers for key in counts[t]} - set(ROWS))
    runs = {_run(report[t]) for t in tiers}
    if len(runs) == 1:
        run = f"the last fuzz run, at {runs.pop()}"
    else:
        run = "the last fuzz runs, " + " and ".join(f"the {t} tier's at {_run(report[t])}" for t in tiers)
    total = sum(report[t]["inputs"] for t in tiers)
    refused = sum(n for t in tiers for key, n in counts[t].items() if key in REFUSALS)
    event_changed = sum(report[t]["event_changed_inputs"] for t in tiers)
    tests = sum(report[t]["tests"] for t in tiers)
    server_errors = sum(counts[t][SERVER_ERROR] for t in tiers)
    escaped = sum(counts[t][ESCAPED] for t in tiers)
    lines = [
        f"From {run}: {tests} property tests tried {total} inputs ({event_changed} of them "
        f"`calendar.calendar.event.changed_v4` payloads) and refused {refused} with a 4xx; {server_errors} got a "
        f"5xx and {escaped} let an exception escape.",
        "",
        "| outcome | " + " | ".join(TIERS[t][1] for t in tiers) + " |",
        "|---|" + "---:|" * len(tiers),
        "| inputs tried | " + " | ".join(str(report[t]["inputs"]) for t in tiers) + " |",
        "| of them event-changed payloads | "
        + " | ".join(str(report[t]["event_changed_inputs"]) for t in tiers)
        + " |",
    ]
    lines += [
        f"| {ROWS.get(key, key)} | " + " | ".join(_cell(t, counts[t][key], key) for t in tiers) + " |" for key in keys
    ]
    return "\n".join(lines)


def problems(report: dict[str, Any]) -> list[str]:
    """Why the report cannot go into the README (a tier missing or failed, a 5xx, an escaped exception)."""
    found = []
    for tier, (module, _) in TIERS.items():
        figures = report.get(tier)
        if not isinstance(figures, dict):
            found.append(f"no {tier} figures: run {module}")
            continue
        if figures.get("failed_tests"):
            found.append(f"{tier}: failed tests {figures['failed_tests']}")
        outcomes = figures.get("outcomes", {})
        if outcomes.get(SERVER_ERROR) or outcomes.get(ESCAPED):
            found.append(f"{tier}: 5xx or escaped exceptions were counted")
    return found


def main() -> int:
    """Rewrite the README's fuzz section from the report; fails if the report is missing or not from passing runs."""
    try:
        report = json.loads(REPORT.read_text())
    except (OSError, ValueError):
        print("no fuzz report: run the fuzz tests first", file=sys.stderr)
        return 1
    if found := problems(report):
        print("fuzz report not written to the README: " + "; ".join(found), file=sys.stderr)
        return 1
    rewrite_section(START, END, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
