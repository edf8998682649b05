"""Fault-schedule fixtures: one DynamoDB Local for the session; figures written at the end."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from local.dynamodb_local import DynamoDBLocal
from local.stack import ROOT

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

REPORT = ROOT / ".local" / "fault-report.json"


@pytest.fixture(scope="session")
def dynamodb_client() -> Iterator[DynamoDBClient]:
    """A client for a session-wide DynamoDB Local."""
    with DynamoDBLocal(ROOT / ".local" / "dynamodb") as instance:
        yield instance.client()


@pytest.fixture(scope="session")
def fault_totals() -> Iterator[dict[str, Counter[str]]]:
    """Faults injected, actions taken (changes, pushes, extra syncs), sync outcomes and the data drawn and mirrored over every schedule of the session, written to a report."""
    totals: dict[str, Counter[str]] = {
        "faults": Counter(),
        "actions": Counter(),
        "syncs": Counter(),
        "data": Counter(),
        "schedules": Counter(),
    }
    yield totals
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps({name: dict(counter) for name, counter in totals.items()}, indent=2) + "\n")
