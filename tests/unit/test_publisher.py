"""The publisher handler (functions/publisher/app.py) with a stubbed EventBridge client: partial batch
responses from the first unpublished record onward, metrics, and nothing but Feishu fields sent."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from feishu_mirror.observability import metrics
from tests.lambda_handlers import ROOT, FakeContext, handler_module
from tests.stream_records import StubEvents, calendar, event, record, renames


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The handler module, imported fresh with its bus name set (and no metric left by earlier tests)."""
    metrics.clear_metrics()
    with handler_module("publisher", monkeypatch, {"CHANGE_BUS_NAME": "test-bus"}) as module:
        built = module.events_client
        yield module
        built.cache_clear()


def invoke(app: ModuleType, stub: StubEvents, records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(app, "events_client", lambda: stub)
    return app.handler({"Records": records}, FakeContext("publisher", remaining_ms=60_000))


def emitted_metrics(output: str) -> dict[str, float]:
    """The Count metrics of the EMF lines the handler printed."""
    values: dict[str, float] = {}
    for line in output.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blob = json.loads(line)
            for metric in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                value = blob[metric["Name"]]
                values[metric["Name"]] = sum(value) if isinstance(value, list) else value
    return values


def test_a_fully_published_batch_reports_no_failures(
    app: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a batch of 12 renames, a no-op write and an event creation
    stub = StubEvents()
    noop = record("MODIFY", old=calendar(summary="a"), new=calendar(mirrored_at=5, summary="a"))
    created = record("INSERT", new=event(summary="Planning", start_time={"timestamp": "1", "timezone": "UTC"}))
    # WHEN the handler runs
    response = invoke(app, stub, [*renames(12), noop, created], monkeypatch)
    # THEN every change went to the configured bus in stream order, 10 per request, and none is retried
    assert response == {"batchItemFailures": []}
    sent = [entry for call in stub.calls for entry in call]
    assert [len(call) for call in stub.calls] == [10, 3]
    assert [e["DetailType"] for e in sent] == ["CalendarUpdated"] * 12 + ["CalendarEventCreated"]
    assert {e["EventBusName"] for e in sent} == {"test-bus"}
    assert emitted_metrics(capsys.readouterr().out) == {
        "ChangesPublished": 13,
        "ChangesSkipped": 1,
    }


def test_a_refused_entry_fails_its_record_and_every_later_one(
    app: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN EventBridge refusing the third entry of the second request
    stub = StubEvents([set(), {2}])
    logs = io.StringIO()
    monkeypatch.setattr(app.logger.registered_handler, "stream", logs)
    records = renames(25)
    # WHEN the handler runs
    response = invoke(app, stub, records, monkeypatch)
    # THEN the partial batch response starts at that record (index 12) and names every later one, in order,
    # and no request was made after the failed one
    expected = [r["dynamodb"]["SequenceNumber"] for r in records[12:]]
    assert response == {"batchItemFailures": [{"itemIdentifier": seq} for seq in expected]}
    assert len(stub.calls) == 2
    assert emitted_metrics(capsys.readouterr().out) == {
        "ChangesPublished": 12,
        "ChangesSkipped": 0,
        "ChangesFailed": 13,
    }
    warning = next(json.loads(line) for line in logs.getvalue().splitlines() if "changes_not_published" in line)
    assert (warning["level"], warning["first_failed_record"], warning["error"]) == (
        "WARNING",
        12,
        "InternalFailure: try again",
    )


def test_a_retried_batch_starts_where_the_last_one_failed(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a batch that failed from record 3 on, as Lambda retries it (from the first reported record)
    records = renames(6)
    first = invoke(app, StubEvents([{3}]), records, monkeypatch)
    retry_from = next(
        i
        for i, r in enumerate(records)
        if r["dynamodb"]["SequenceNumber"] == first["batchItemFailures"][0]["itemIdentifier"]
    )
    stub = StubEvents()
    # WHEN the retry succeeds THEN exactly the unpublished changes went out, in order
    assert invoke(app, stub, records[retry_from:], monkeypatch) == {"batchItemFailures": []}
    assert stub.summaries() == [["s3", "s4", "s5"]]


def test_a_batch_whose_first_change_fails_is_a_function_error(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # Powertools raises when every record failed: Lambda then retries (and bisects) the whole batch
    with pytest.raises(BatchProcessingError):
        invoke(app, StubEvents([ConnectionError("down")]), renames(3), monkeypatch)


def test_only_feishu_fields_and_ids_leave_the_mirror(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = StubEvents()
    item = calendar(summary="s", access_token="t-should-never-leave", sync_token="st-never")
    invoke(app, stub, [record("INSERT", new=item)], monkeypatch)
    (entry,) = stub.calls[0]
    detail = json.loads(entry["Detail"])
    assert set(detail) == {
        "schema_version",
        "open_id",
        "calendar_id",
        "before",
        "after",
        "changed",
        "mirrored_at",
        "change_id",
        "sequence",
    }
    assert "never" not in entry["Detail"]


def test_the_events_client_is_built_lazily_and_once(app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3's standard override (the service id is EventBridge): how the local stack points it at its bus
    monkeypatch.setenv("AWS_ENDPOINT_URL_EVENTBRIDGE", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    client = app.events_client()
    assert app.events_client() is client
    assert client.meta.endpoint_url == "http://127.0.0.1:9"


def test_the_sample_event_for_sam_local_invoke_publishes_one_rename(
    app: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = StubEvents()
    sample = json.loads((ROOT / "events" / "publisher-calendar-renamed.json").read_text())
    assert invoke(app, stub, sample["Records"], monkeypatch) == {"batchItemFailures": []}
    ((entry,),) = stub.calls
    detail = json.loads(entry["Detail"])
    assert (entry["DetailType"], detail["changed"], detail["after"]["summary"]) == (
        "CalendarUpdated",
        ["summary"],
        "Team standup (daily)",
    )
