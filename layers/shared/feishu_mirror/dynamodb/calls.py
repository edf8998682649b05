"""How requests to DynamoDB are made: every page of a Query (boto3's paginator), retried batch reads,
and what a failed request means (a condition that did not hold, or a hiccup worth sending again)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

BATCH_GET_KEYS = 100  # DynamoDB's limit of keys per BatchGetItem
BATCH_GET_ATTEMPTS = 8

# DynamoDB failures after which the same write may simply be sent again (boto3 has retried them already).
TRANSIENT_ERRORS = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
    }
)


def error_code(exc: ClientError) -> str:
    """The error code DynamoDB answered with."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_condition_failure(exc: ClientError) -> bool:
    """True when a conditional write was refused because its condition did not hold."""
    return error_code(exc) == "ConditionalCheckFailedException"


def is_transient(exc: Exception) -> bool:
    """True for a throttle, a server error, a transaction conflict or a dropped connection."""
    if isinstance(exc, ClientError):
        return error_code(exc) in TRANSIENT_ERRORS
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def query_pages(client: DynamoDBClient, request: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every page of one Query, fetched as they are consumed (boto3's paginator follows
    ``LastEvaluatedKey``); stop iterating to stop reading."""
    for page in client.get_paginator("query").paginate(**request):
        yield dict(page)


def query_items(client: DynamoDBClient, request: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every item one Query finds, page after page, as DynamoDB attribute values."""
    for page in query_pages(client, request):
        yield from page.get("Items", [])


def batch_get(
    client: DynamoDBClient,
    table: str,
    keys: list[dict[str, Any]],
    *,
    sleep: Callable[[float], None],
) -> Iterator[dict[str, Any]]:
    """The items with these keys that exist (strongly consistent), ``BATCH_GET_KEYS`` keys a request;
    keys DynamoDB leaves unprocessed are asked for again, with jittered backoff."""
    for start in range(0, len(keys), BATCH_GET_KEYS):
        request: dict[str, Any] = {table: {"Keys": keys[start : start + BATCH_GET_KEYS], "ConsistentRead": True}}
        for attempt in range(BATCH_GET_ATTEMPTS):
            response = client.batch_get_item(RequestItems=request)
            yield from response.get("Responses", {}).get(table, [])
            request = dict(response.get("UnprocessedKeys") or {})
            if not request:
                break
            sleep(random.uniform(0, 0.05 * 2**attempt))  # noqa: S311 - jitter
        else:
            raise RuntimeError("BatchGetItem kept returning unprocessed keys")
