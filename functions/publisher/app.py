"""Publisher function: the mirror tables' DynamoDB Streams → domain events on the change bus.

Each batch (one shard, in order) is mapped by ``feishu_mirror.changes`` and sent with ``PutEvents`` in
requests of up to 10 entries. The first record whose entry EventBridge refused, and every record after
it, are reported as ``batchItemFailures`` (Powertools' partial batch response), so Lambda retries from
there and a consumer never sees an item's later change go out before an earlier one.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import boto3
from aws_lambda_powertools import Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

from feishu_mirror import aws_clients
from feishu_mirror.changes import EventsClient, publish
from feishu_mirror.observability import count, logger, metrics

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

tracer = Tracer()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


class ChangeNotPublished(RuntimeError):
    """The record's change (or an earlier one of the batch) did not reach EventBridge."""


@cache
def events_client() -> EventsClient:
    """The EventBridge client, built on first use (``AWS_ENDPOINT_URL_EVENTBRIDGE`` points it elsewhere)."""
    return cast("EventsClient", boto3.client("events", config=aws_clients.CONFIG))


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    """DynamoDB Streams batch handler with a partial batch response."""
    records: list[dict[str, Any]] = event.get("Records") or []
    publication = publish(
        records, events_client(), os.environ["CHANGE_BUS_NAME"], time_left_ms=context.get_remaining_time_in_millis
    )
    count("ChangesPublished", publication.published)
    count("ChangesSkipped", publication.skipped)
    unpublished: set[str] = set()
    if publication.failed_at is not None:
        unpublished = {str((r.get("dynamodb") or {}).get("SequenceNumber")) for r in records[publication.failed_at :]}
        count("ChangesFailed", len(unpublished))
        logger.warning(
            "changes_not_published",
            extra={
                "records": len(records),
                "first_failed_record": publication.failed_at,
                "error": publication.error,
            },
        )

    def record_handler(record: DynamoDBRecord) -> None:
        """Fails the records from the first unpublished one onward; the rest went out above."""
        if str(record.dynamodb.sequence_number if record.dynamodb else None) in unpublished:
            raise ChangeNotPublished(publication.error)

    logger.info(
        "changes_published",
        extra={"records": len(records), "published": publication.published, "skipped": publication.skipped},
    )
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
