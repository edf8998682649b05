"""Shared pytest configuration: the unit tier must not touch the network; the fuzz figures are written
at the end of a session that ran fuzz tests (``tests/fuzz_report.py``)."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from tests.fuzz_report import TALLY

# Settings.from_env and Powertools read these; keep them harmless for every tier.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "FeishuCalendarMirrorTests")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "feishu-calendar-mirror-tests")


@pytest.fixture(autouse=True)
def _no_network_in_unit_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests are pure: any socket connection is a test bug."""
    if "tests/unit" in str(request.node.path):

        def refuse(*_args: Any, **_kwargs: Any) -> None:
            raise AssertionError("unit tests must not open network connections")

        monkeypatch.setattr(socket.socket, "connect", refuse)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A failed fuzz test (in any phase) marks its tier's figures as not from a passing run."""
    if report.failed:
        TALLY.note_failure(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Merge the fuzz figures of this session's tiers into ``.local/fuzz-report.json`` (only if fuzz ran)."""
    TALLY.write()
