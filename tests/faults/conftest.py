"""Fault-schedule fixtures: one DynamoDB Local and one local KMS (the token key) for the session, the
record of the AWS calls each function's code makes (for the IAM test); figures written at the end."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from feishu_mirror.token_vault import DataKeys, KmsDataKeys
from local.aws_calls import CallRecorder, JsonLinesSink, name_resolver
from local.dynamodb_local import DynamoDBLocal
from local.kms import LocalKms
from local.stack import ROOT
from local.template import load

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

REPORT = ROOT / ".local" / "fault-report.json"
CALLS = ROOT / ".local" / "aws-calls" / "faults"


@pytest.fixture(scope="session")
def local_kms() -> Iterator[LocalKms]:
    """A session-wide local KMS."""
    with LocalKms() as kms:
        yield kms


@pytest.fixture(scope="session")
def token_key(local_kms: LocalKms) -> str:
    """The ARN of the schedules' token key."""
    return local_kms.create_key("fault schedules' token key")


@pytest.fixture(scope="session")
def aws_calls(token_key: str) -> CallRecorder:
    """Records, once per distinct call, which function's code made which AWS call on what (emptied per session)."""
    shutil.rmtree(CALLS, ignore_errors=True)
    logical_ids = set(load(ROOT).tables) | {"TokenKey"}
    return CallRecorder(
        JsonLinesSink(CALLS / "calls.jsonl"), resolve=name_resolver({token_key: "TokenKey"}, logical_ids)
    )


@pytest.fixture(scope="session")
def dynamodb_client(aws_calls: CallRecorder) -> Iterator[DynamoDBClient]:
    """A client for a session-wide DynamoDB Local."""
    with DynamoDBLocal(ROOT / ".local" / "dynamodb") as instance:
        yield aws_calls.attach(instance.client())


@pytest.fixture(scope="session")
def token_keys(local_kms: LocalKms, token_key: str, aws_calls: CallRecorder) -> DataKeys:
    """The users' tokens are sealed with a key of the local KMS, as in the cloud."""
    return KmsDataKeys(aws_calls.attach(local_kms.client()), token_key)


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
