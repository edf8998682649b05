"""Randomized fault schedules: after quiescence and one scheduled resync the mirror equals the truth.

``FAULT_SCHEDULES`` (default 200) sets how many seeds run; ``FAULT_SEED_START`` where they start.
A failure prints its seed and the whole schedule; rerun one with ``FAULT_SEED_START=<seed>
FAULT_SCHEDULES=1``. ``make soak`` runs thousands.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from feishu_mirror.token_vault import DataKeys
from local.aws_calls import CallRecorder
from tests.faults.schedule import Schedule

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

START = int(os.environ.get("FAULT_SEED_START", "1"))
COUNT = int(os.environ.get("FAULT_SCHEDULES", "200"))

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("seed", range(START, START + COUNT))
def test_schedule_converges(
    seed: int,
    dynamodb_client: DynamoDBClient,
    token_keys: DataKeys,
    aws_calls: CallRecorder,
    fault_totals: dict[str, Counter[str]],
) -> None:
    # GIVEN a seeded schedule of calendar and event changes, pings, concurrent syncs and faults
    schedule = Schedule(seed, dynamodb_client, token_keys, aws_calls)
    # WHEN it runs, quiesces and the scheduled resync has run THEN every invariant holds (see schedule.py)
    schedule.run()
    fault_totals["faults"].update(schedule.report.faults)
    fault_totals["actions"].update(schedule.report.actions)
    fault_totals["syncs"].update(schedule.report.syncs)
    fault_totals["data"].update(schedule.report.data)
    fault_totals["schedules"]["converged"] += 1
