"""The change stream on DynamoDB Local's real streams: mirror writes → the local event source mapping
(``local.streams``) → the publisher handler (in-process) → the local EventBridge (``local.eventbridge``).
Also the mapping's own Lambda semantics: record shape, partial batch responses, bisecting, giving up."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import requests
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from feishu_mirror.changes import SOURCE
from feishu_mirror.composition import GivenClients, build
from feishu_mirror.config import Settings
from feishu_mirror.dynamodb.values import attribute_values
from feishu_mirror.models import Calendar, CollectionId, Fence, SealedGrant, UserIdentity
from local.dynamodb_local import DynamoDBLocal, create_tables
from local.eventbridge import LocalEventBridge
from local.lambdas import Invocation
from local.stack import ROOT
from local.streams import StreamMappings
from local.template import REGION, Template, load
from tests.lambda_handlers import FakeContext, handler_module

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

pytestmark = pytest.mark.integration

Invoke = Callable[[str, Any], Invocation]


@pytest.fixture
def template(dynamodb_client: DynamoDBClient) -> Template:
    """Fresh copies of the template's tables (with their streams)."""
    loaded = load(ROOT, prefix=f"cs{uuid.uuid4().hex[:8]}-")
    create_tables(dynamodb_client, loaded.tables, loaded.table_names)
    return loaded


@pytest.fixture
def bus() -> Iterator[LocalEventBridge]:
    bridge = LocalEventBridge()
    yield bridge
    bridge.stop()


@pytest.fixture
def streams_client(dynamodb: DynamoDBLocal) -> Any:
    return boto3.client(
        "dynamodbstreams",
        endpoint_url=dynamodb.endpoint,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


@pytest.fixture
def publisher(monkeypatch: pytest.MonkeyPatch, template: Template, bus: LocalEventBridge) -> Iterator[Invoke]:
    """The publisher handler, imported fresh and pointed at the local bus, as an ``invoke`` that runs one
    invocation at a time (as one Lambda container does)."""
    env = {
        "CHANGE_BUS_NAME": template.event_buses["ChangeBus"],
        "AWS_ENDPOINT_URL_EVENTBRIDGE": bus.endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
    }
    with handler_module("publisher", monkeypatch, env) as app:
        one_at_a_time = threading.Lock()

        def invoke(logical_id: str, event: Any) -> Invocation:
            assert logical_id == "PublisherFunction"
            with one_at_a_time:
                started = time.monotonic()
                try:
                    payload = app.handler(event, FakeContext("publisher", remaining_ms=60_000))
                except Exception as exc:
                    return Invocation(None, {"errorType": type(exc).__name__, "errorMessage": str(exc)[:200]}, 0)
                return Invocation(payload, None, (time.monotonic() - started) * 1000)

        yield invoke
        app.events_client.cache_clear()


@pytest.fixture
def start_mappings(
    template: Template, dynamodb_client: DynamoDBClient, streams_client: Any, tmp_path: Path
) -> Iterator[Callable[..., StreamMappings]]:
    """Starts the template's stream mappings with a given ``invoke`` (and source overrides); stops them after."""
    started: list[StreamMappings] = []

    def start(invoke: Invoke, **source_overrides: Any) -> StreamMappings:
        sources = [dataclasses.replace(s, **source_overrides) for s in template.stream_sources]
        mappings = StreamMappings(
            dataclasses.replace(template, stream_sources=sources),
            dynamodb=dynamodb_client,
            streams=streams_client,
            invoke=invoke,
            failures_file=tmp_path / "stream-failures.jsonl",
        ).start()
        started.append(mappings)
        return mappings

    yield start
    for mappings in started:
        mappings.stop()


class Mirror:
    """Writes to the calendars table the way the sync does: through ``CalendarStore`` under a lease."""

    def __init__(self, client: DynamoDBClient, template: Template, open_id: str) -> None:
        names = template.table_names
        self.now = int(time.time())
        settings = Settings(users_table=names["UsersTable"], calendars_table=names["CalendarsTable"])
        tables = build(settings, GivenClients(client)).tables
        tables.tokens.save_authorization(
            UserIdentity(open_id), SealedGrant(b"sealed-at", self.now + 7200, b"sealed-rt", self.now + 86400), self.now
        )
        assert tables.schedule.acquire_lease(open_id, "test", self.now, self.now + 600) is not None
        self.fence = Fence(open_id, "test")
        self.calendars = tables.calendars

    def write(self, upserts: Sequence[Calendar] = (), deletions: Sequence[Calendar] = ()) -> int:
        """One sync's write, one second after the previous (so mirrored_at moves)."""
        self.now += 1
        self.calendars.apply(
            self.fence, self.now, CollectionId(self.fence.open_id), upserts=upserts, deletions=deletions
        )
        return self.now * 1000


def summaries(events: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    return [
        (e["detail-type"], e["detail"]["calendar_id"], (e["detail"]["after"] or e["detail"]["before"])["summary"])
        for e in events
    ]


# --------------------------------------------------------------------------------- calendars table


def test_calendar_writes_become_change_events_on_the_bus(
    dynamodb_client: DynamoDBClient,
    template: Template,
    bus: LocalEventBridge,
    publisher: Invoke,
    start_mappings: Callable[..., StreamMappings],
) -> None:
    # GIVEN the publisher reading the template's streams
    mappings = start_mappings(publisher)
    mirror = Mirror(dynamodb_client, template, "ou_stream")
    # WHEN the sync writes two new calendars, renames one, rewrites it unchanged, and tombstones the other
    created_at = mirror.write(
        [Calendar("cal_a", {"summary": "Team", "color": 1}), Calendar("cal_b", {"summary": "Old"})]
    )
    renamed_at = mirror.write([Calendar("cal_a", {"summary": "Team (daily)", "color": 1})])
    mirror.write([Calendar("cal_a", {"summary": "Team (daily)", "color": 1})])
    deleted_at = mirror.write(deletions=[Calendar("cal_b", {"summary": "Old"})])
    # THEN the bus receives exactly one event per change, in the order the changes were made
    bus_name = template.event_buses["ChangeBus"]
    assert bus.wait_for(lambda events: len(events) >= 4, bus_name, timeout=30)
    assert mappings.wait_drained(30)
    events = bus.events(bus_name)
    assert summaries(events) == [
        ("CalendarCreated", "cal_a", "Team"),
        ("CalendarCreated", "cal_b", "Old"),
        ("CalendarUpdated", "cal_a", "Team (daily)"),
        ("CalendarDeleted", "cal_b", "Old"),
    ]
    assert all(e["source"] == SOURCE and e["account"] and e["id"] for e in events)
    updated, deleted = events[2]["detail"], events[3]["detail"]
    assert updated.pop("change_id")
    assert int(updated.pop("sequence")) > int(events[0]["detail"]["sequence"])
    assert updated == {
        "schema_version": "1",
        "open_id": "ou_stream",
        "calendar_id": "cal_a",
        "before": {"summary": "Team", "color": 1},
        "after": {"summary": "Team (daily)", "color": 1},
        "changed": ["summary"],
        "mirrored_at": renamed_at,
    }
    assert events[0]["detail"]["mirrored_at"] == created_at
    assert (deleted["before"], deleted["after"], deleted["mirrored_at"]) == ({"summary": "Old"}, None, deleted_at)
    assert mappings.failures == []


def test_entries_eventbridge_refuses_are_retried_from_the_first_refused_record(
    dynamodb_client: DynamoDBClient,
    template: Template,
    bus: LocalEventBridge,
    publisher: Invoke,
    start_mappings: Callable[..., StreamMappings],
) -> None:
    # GIVEN EventBridge refusing the change of cal_2 once
    bus.fail_entries(lambda event: event["detail"]["calendar_id"] == "cal_2", times=1)
    invocations: list[list[str]] = []

    def recording(logical_id: str, event: Any) -> Invocation:
        invocations.append([r["dynamodb"]["Keys"]["calendar_id"]["S"] for r in event["Records"]])
        return publisher(logical_id, event)

    # WHEN three calendars are written in one sync (one batch), then the mapping reads them
    mirror = Mirror(dynamodb_client, template, "ou_retry")
    mirror.write([Calendar(f"cal_{n}", {"summary": f"s{n}"}) for n in (1, 2, 3)])
    mappings = start_mappings(recording)
    assert mappings.wait_drained(30)
    # THEN the publisher reported cal_2 onward as failed, Lambda retried from cal_2, and every change reached
    # the bus (cal_3, accepted in the refused request, once more: at least once)
    assert invocations == [["cal_1", "cal_2", "cal_3"], ["cal_2", "cal_3"]]
    assert [e["detail"]["calendar_id"] for e in bus.refused()] == ["cal_2"]
    events = bus.events(template.event_buses["ChangeBus"])
    assert [e["detail"]["calendar_id"] for e in events] == ["cal_1", "cal_3", "cal_2", "cal_3"]
    # AND the duplicate is the same change (same detail, change_id included) under a new EventBridge id
    first, again = (e for e in events if e["detail"]["calendar_id"] == "cal_3")
    assert first["detail"] == again["detail"]
    assert first["id"] != again["id"]
    assert mappings.failures == []


def test_a_batch_that_keeps_failing_goes_to_the_failure_destination_and_the_stream_moves_on(
    dynamodb_client: DynamoDBClient,
    template: Template,
    bus: LocalEventBridge,
    publisher: Invoke,
    start_mappings: Callable[..., StreamMappings],
) -> None:
    # GIVEN EventBridge refusing every change of cal_bad, and a mapping that retries once
    bus.fail_entries(lambda event: event["detail"]["calendar_id"] == "cal_bad", times=1000)
    mirror = Mirror(dynamodb_client, template, "ou_poison")
    mirror.write([Calendar("cal_ok", {"summary": "fine"})])
    mirror.write([Calendar("cal_bad", {"summary": "refused"})])
    mappings = start_mappings(publisher, max_retry_attempts=1)
    assert mappings.wait_drained(30)
    # THEN the refused record's batch is reported with where it lies in the stream, once
    (failure,) = mappings.failures
    info = failure["DDBStreamBatchInfo"]
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert failure["requestContext"]["approximateInvokeCount"] == 2
    assert info["batchSize"] == 1
    assert info["startSequenceNumber"] == info["endSequenceNumber"]
    assert info["streamArn"].startswith(f"arn:aws:dynamodb:{REGION}:")
    # AND later changes are still published
    mirror.write([Calendar("cal_later", {"summary": "after"})])
    bus_name = template.event_buses["ChangeBus"]
    assert bus.wait_for(lambda events: any(e["detail"]["calendar_id"] == "cal_later" for e in events), bus_name)
    assert [e["detail"]["calendar_id"] for e in bus.events(bus_name)] == ["cal_ok", "cal_later"]


# ------------------------------------------------------------------------------------ events table


def test_event_items_written_directly_become_event_changes(
    dynamodb_client: DynamoDBClient,
    template: Template,
    bus: LocalEventBridge,
    publisher: Invoke,
    start_mappings: Callable[..., StreamMappings],
) -> None:
    mappings = start_mappings(publisher)
    table = template.table_names["EventsTable"]
    key = {"calendar_key": "ou_ev#cal_1", "event_id": "evt_1"}
    base = {**key, "open_id": "ou_ev", "calendar_id": "cal_1"}
    fields = {
        "summary": "Planning",
        "start_time": {"timestamp": "1767225600", "timezone": "Asia/Shanghai"},
        "reminders": [{"minutes": 5}],
    }

    def put(**item: Any) -> None:
        dynamodb_client.put_item(TableName=table, Item=attribute_values({**base, **item}))

    # WHEN an event is created, its reminders change, it is rewritten unchanged, tombstoned, and the
    # tombstone removed
    put(**fields, mirrored_at=1)
    put(**fields | {"reminders": [{"minutes": 5}, {"minutes": 30}]}, mirrored_at=2)
    put(**fields | {"reminders": [{"minutes": 5}, {"minutes": 30}]}, mirrored_at=3)
    put(**fields, mirrored_at=4, deleted_at=4, expires_at=4 + 2_592_000)
    dynamodb_client.delete_item(TableName=table, Key=attribute_values(key))
    # THEN the bus gets the creation, the update of the nested field and the deletion, and nothing else
    bus_name = template.event_buses["ChangeBus"]
    assert bus.wait_for(lambda events: len(events) >= 3, bus_name)
    assert mappings.wait_drained(30)
    created, updated, deleted = bus.events(bus_name)
    assert [created["detail-type"], updated["detail-type"], deleted["detail-type"]] == [
        "CalendarEventCreated",
        "CalendarEventUpdated",
        "CalendarEventDeleted",
    ]
    assert created["detail"]["after"] == fields
    assert (created["detail"]["open_id"], created["detail"]["calendar_id"], created["detail"]["event_id"]) == (
        "ou_ev",
        "cal_1",
        "evt_1",
    )
    assert updated["detail"]["changed"] == ["reminders"]
    assert updated["detail"]["after"]["reminders"] == [{"minutes": 5}, {"minutes": 30}]
    assert (deleted["detail"]["after"], deleted["detail"]["mirrored_at"]) == (None, 4)


def test_a_stream_first_written_after_another_tables_writes_is_read_from_its_first_record(
    *,
    dynamodb_client: DynamoDBClient,
    template: Template,
    bus: LocalEventBridge,
    publisher: Invoke,
    start_mappings: Callable[..., StreamMappings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN both mappings reading their still empty streams (DynamoDB Local numbers stream records across
    # tables, so the events stream's first record is far past where its empty shard started)
    mappings = start_mappings(publisher)
    assert mappings.wait_drained(30)
    # WHEN the calendars table is written first and the events table only then
    mirror = Mirror(dynamodb_client, template, "ou_order")
    mirror.write([Calendar(f"cal_{n}", {"summary": f"s{n}"}) for n in range(3)])
    assert mappings.wait_drained(30)
    item = {"calendar_key": "ou_order#cal_0", "event_id": "evt_1", "open_id": "ou_order", "calendar_id": "cal_0"}
    dynamodb_client.put_item(
        TableName=template.table_names["EventsTable"], Item=attribute_values({**item, "summary": "x", "mirrored_at": 1})
    )
    # THEN the event's change is published too, without the poller stumbling
    bus_name = template.event_buses["ChangeBus"]
    assert bus.wait_for(lambda events: any(e["detail-type"] == "CalendarEventCreated" for e in events), bus_name)
    assert mappings.wait_drained(30)
    assert len(bus.events(bus_name)) == 4
    assert "stream poller" not in capsys.readouterr().err


# ------------------------------------------------------------------- the local mapping's Lambda semantics


def test_the_function_gets_records_shaped_like_lambdas_dynamodb_event(
    dynamodb_client: DynamoDBClient, template: Template, start_mappings: Callable[..., StreamMappings]
) -> None:
    # GIVEN a function that records what it is invoked with
    batches: list[dict[str, Any]] = []

    def recording(_logical_id: str, event: Any) -> Invocation:
        batches.append(event)
        return Invocation({"batchItemFailures": []}, None, 0)

    # WHEN an item with a binary attribute is written, then rewritten, then removed
    table = template.table_names["CalendarsTable"]
    key = {"open_id": {"S": "ou_shape"}, "calendar_id": {"S": "cal_1"}}
    dynamodb_client.put_item(TableName=table, Item={**key, "summary": {"S": "a"}, "blob": {"B": b"\x00\x01"}})
    dynamodb_client.put_item(TableName=table, Item={**key, "summary": {"S": "b"}})
    dynamodb_client.delete_item(TableName=table, Key=key)
    mappings = start_mappings(recording)
    assert mappings.wait_drained(30)
    # THEN one batch holds the three records as Lambda delivers them
    (batch,) = batches
    records = batch["Records"]
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
    stream_arn = dynamodb_client.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    for r in records:
        assert set(r) >= {
            "eventID",
            "eventName",
            "eventVersion",
            "eventSource",
            "awsRegion",
            "dynamodb",
            "eventSourceARN",
        }
        assert (r["eventSource"], r["eventVersion"], r["awsRegion"]) == ("aws:dynamodb", "1.1", REGION)
        assert r["eventSourceARN"] == stream_arn.replace(":ddblocal:", f":{REGION}:")
        body = r["dynamodb"]
        assert body["Keys"] == key
        assert body["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        assert isinstance(body["ApproximateCreationDateTime"], int)
        assert abs(body["ApproximateCreationDateTime"] - time.time()) < 300
        assert isinstance(body["SizeBytes"], int)
        parsed = DynamoDBRecord(r)  # what Powertools makes of it
        assert parsed.dynamodb is not None
        assert parsed.dynamodb.sequence_number == body["SequenceNumber"]
    assert records[0]["dynamodb"]["NewImage"]["blob"] == {"B": "AAE="}  # binary as base64, as in Lambda's JSON
    assert "OldImage" not in records[0]["dynamodb"]
    assert records[1]["dynamodb"]["OldImage"]["summary"] == {"S": "a"}
    assert "NewImage" not in records[2]["dynamodb"]
    sequence = [int(r["dynamodb"]["SequenceNumber"]) for r in records]
    assert sequence == sorted(sequence)


def test_a_function_error_bisects_the_batch_to_isolate_the_bad_record(
    dynamodb_client: DynamoDBClient, template: Template, start_mappings: Callable[..., StreamMappings]
) -> None:
    # GIVEN a function that crashes on any batch holding the calendar "poison"
    delivered: list[str] = []
    attempts: list[list[str]] = []

    def crashing(_logical_id: str, event: Any) -> Invocation:
        ids = [r["dynamodb"]["Keys"]["calendar_id"]["S"] for r in event["Records"]]
        attempts.append(ids)
        if "poison" in ids:
            return Invocation(None, {"errorType": "KeyError", "errorMessage": "poison"}, 0)
        delivered.extend(ids)
        return Invocation(None, None, 0)  # a handler that returns nothing succeeded

    table = template.table_names["CalendarsTable"]
    for calendar_id in ("a", "b", "poison", "d"):
        dynamodb_client.put_item(
            TableName=table, Item={"open_id": {"S": "ou_bisect"}, "calendar_id": {"S": calendar_id}}
        )
    # WHEN the mapping (bisecting on errors, one retry) delivers them
    mappings = start_mappings(crashing, max_retry_attempts=1)
    assert mappings.wait_drained(30)
    # THEN the batch was halved until the bad record was alone, everything else was delivered once, and only
    # the bad record went to the failure destination
    assert attempts[:3] == [["a", "b", "poison", "d"], ["a", "b"], ["poison", "d"]]
    assert delivered == ["a", "b", "d"]
    (failure,) = mappings.failures
    assert failure["DDBStreamBatchInfo"]["batchSize"] == 1
    assert failure["responseContext"]["functionError"] == "Unhandled"


def test_an_unusable_partial_batch_response_retries_the_whole_batch(
    dynamodb_client: DynamoDBClient, template: Template, start_mappings: Callable[..., StreamMappings]
) -> None:
    # GIVEN a function whose first answer names a record that is not in the batch
    answers = iter([{"batchItemFailures": [{"itemIdentifier": "no-such-record"}]}])
    batches: list[int] = []

    def confused(_logical_id: str, event: Any) -> Invocation:
        batches.append(len(event["Records"]))
        return Invocation(next(answers, {"batchItemFailures": []}), None, 0)

    table = template.table_names["CalendarsTable"]
    for calendar_id in ("a", "b"):
        dynamodb_client.put_item(TableName=table, Item={"open_id": {"S": "ou_x"}, "calendar_id": {"S": calendar_id}})
    mappings = start_mappings(confused)
    assert mappings.wait_drained(30)
    # THEN Lambda's rule applies: the whole batch is retried
    assert batches == [2, 2]


def test_the_local_bus_speaks_putevents_and_validates_like_eventbridge(bus: LocalEventBridge) -> None:
    client = boto3.client(
        "events", endpoint_url=bus.endpoint, region_name=REGION, aws_access_key_id="l", aws_secret_access_key="l"
    )
    answer = client.put_events(
        Entries=[
            {"Source": "s", "DetailType": "T", "Detail": '{"a": 1}', "EventBusName": "b1"},
            {"Source": "s", "DetailType": "T", "Detail": "not json", "EventBusName": "b1"},
            {
                "Source": "s",
                "DetailType": "T",
                "Detail": "{}",
                "EventBusName": "arn:aws:events:us-east-1:000000000000:event-bus/b2",
            },
        ]
    )
    assert answer["FailedEntryCount"] == 1
    assert answer["Entries"][1] == {"ErrorCode": "MalformedDetail", "ErrorMessage": "Detail is malformed."}
    assert [e["detail"] for e in bus.events("b1")] == [{"a": 1}]
    assert bus.events("b2")[0]["id"] == answer["Entries"][2]["EventId"]
    with pytest.raises(client.exceptions.ClientError, match="ValidationException"):
        client.put_events(Entries=[{"Source": "s", "DetailType": "T", "Detail": "{}"}] * 11)
    # AND a raw request with another target is refused
    reply = requests.post(bus.endpoint, data="{}", headers={"X-Amz-Target": "AWSEvents.ListRules"}, timeout=5)
    assert reply.status_code == 400
    assert reply.json()["__type"] == "UnknownOperationException"
