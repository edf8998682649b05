"""Fault-schedule fixtures: one DynamoDB Local and one local KMS (the token key) for the session; figures
written at the end."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from feishu_mirror.token_vault import KmsDataKeys, TokenVault
from local.dynamodb_local import DynamoDBLocal
from local.kms import LocalKms
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
def token_vault() -> Iterator[TokenVault]:
    """The users' tokens are sealed with a key of a session-wide local KMS, as in the cloud."""
    with LocalKms() as kms:
        yield TokenVault(KmsDataKeys(kms.client(), kms.create_key("fault schedules' token key")))


@pytest.fixture(scope="session")
def fault_totals() -> Iterator[dict[str, Counter[str]]]:
    """Faults injected, actions taken (changes, pushes, extra syncs) and sync outcomes over every schedule of the session, written to a report."""
    totals: dict[str, Counter[str]] = {
        "faults": Counter(),
        "actions": Counter(),
        "syncs": Counter(),
        "schedules": Counter(),
    }
    yield totals
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps({name: dict(counter) for name, counter in totals.items()}, indent=2) + "\n")
