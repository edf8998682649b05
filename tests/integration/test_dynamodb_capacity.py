"""The capacity rules of ``local.dynamodb_capacity`` against what DynamoDB Local reports, on the Events
table of the template (with its agenda index) and items of every size around the unit boundaries."""

from __future__ import annotations

import random
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from feishu_mirror.dynamodb.values import attribute_values
from local.dynamodb_capacity import Index, item_size, read_units, write_units
from local.dynamodb_local import create_tables
from local.stack import ROOT
from local.template import load

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

pytestmark = pytest.mark.integration
AGENDA = Index(
    "agenda-index",
    ("agenda_key", "agenda_at"),
    ("agenda_entry", "agenda_start", "agenda_end"),
    ("calendar_key", "event_id"),
)


def _event(rng: random.Random, key: str, *, indexed: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "calendar_key": "ou_cap#cal",
        "event_id": key,
        "summary": "会议 " + "x" * rng.randrange(0, 1400),
        "start_time": {"timestamp": str(rng.randrange(10**9, 2 * 10**9)), "timezone": "Asia/Shanghai"},
        "reminders": [{"minutes": rng.choice((5, 15))}],
        "color": rng.choice((-1, 12345678901234567890, Decimal("31.2304"))),
        "is_exception": rng.random() < 0.5,
        "mirror_reduced": {"location": "invalid_text"} if rng.random() < 0.2 else {},
        "sealed": rng.randbytes(rng.randrange(0, 600)),
        "dirty": {"c1", "c22"},
    }
    if indexed:
        item |= {
            "agenda_key": "ou_cap#short",
            "agenda_at": rng.randrange(10**9, 2 * 10**9),
            "agenda_entry": "{}" + "e" * rng.randrange(0, 1200),
            "agenda_start": 1,
            "agenda_end": 2,
        }
    return item


def _units(response: Any) -> tuple[float, float]:
    consumed = response["ConsumedCapacity"]
    indexes = consumed.get("GlobalSecondaryIndexes", {})
    return consumed["Table"]["CapacityUnits"], sum(i["CapacityUnits"] for i in indexes.values())


def test_single_item_writes_reads_and_index_writes_cost_what_dynamodb_reports(dynamodb_client: DynamoDBClient) -> None:
    # GIVEN the template's Events table
    template = load(ROOT, prefix=f"cap{uuid.uuid4().hex[:6]}-")
    create_tables(dynamodb_client, template.tables, template.table_names)
    table = template.table_names["EventsTable"]
    rng = random.Random(16)
    stored: dict[str, dict[str, Any]] = {}
    for n in range(60):
        # WHEN items of many sizes are put, replaced (moving in and out of the index), read and deleted
        key = f"evt{n % 20}_0"
        before = stored.get(key)
        after = _event(rng, key, indexed=rng.random() < 0.7)
        put = dynamodb_client.put_item(TableName=table, Item=attribute_values(after), ReturnConsumedCapacity="INDEXES")
        # THEN the table's and the index's units are ours
        assert _units(put) == (write_units(before, after), AGENDA.write_units(before, after)), (n, item_size(after))
        stored[key] = after
        got = dynamodb_client.get_item(
            TableName=table,
            Key=attribute_values({"calendar_key": "ou_cap#cal", "event_id": key}),
            ConsistentRead=True,
            ReturnConsumedCapacity="TOTAL",
        )
        assert got["ConsumedCapacity"]["CapacityUnits"] == read_units(item_size(after))
    query = dynamodb_client.query(
        TableName=table,
        KeyConditionExpression="calendar_key = :p",
        ExpressionAttributeValues=attribute_values({":p": "ou_cap#cal"}),
        ConsistentRead=True,
        ReturnConsumedCapacity="TOTAL",
    )
    assert query["ConsumedCapacity"]["CapacityUnits"] == read_units(sum(item_size(i) for i in stored.values()))
    for key, before in sorted(stored.items())[:10]:
        deleted = dynamodb_client.delete_item(
            TableName=table,
            Key=attribute_values({"calendar_key": "ou_cap#cal", "event_id": key}),
            ReturnConsumedCapacity="INDEXES",
        )
        assert _units(deleted) == (write_units(before, None), AGENDA.write_units(before, None))
