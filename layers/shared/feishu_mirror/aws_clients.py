"""The AWS clients of a Lambda container: one boto3 configuration, each client created once, on first use.

Short timeouts, so a stuck call fails fast, and boto3's standard retries. AWS endpoints are never
hard-coded: boto3 honours ``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL_LAMBDA``,
``AWS_ENDPOINT_URL_KMS`` and ``AWS_ENDPOINT_URL_EVENTBRIDGE``, which is how the same code runs against
DynamoDB Local, a local Lambda API, a local stand-in for KMS and a local event bus. The publisher builds
its EventBridge client with the same ``CONFIG``.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_kms.client import KMSClient
    from mypy_boto3_lambda.client import LambdaClient

CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})


@cache
def dynamodb() -> DynamoDBClient:
    """The DynamoDB client."""
    return boto3.client("dynamodb", config=CONFIG)


@cache
def lambda_client() -> LambdaClient:
    """The Lambda client that starts syncs."""
    return boto3.client("lambda", config=CONFIG)


@cache
def kms() -> KMSClient:
    """The KMS client that wraps and unwraps the data keys of users' tokens."""
    return boto3.client("kms", config=CONFIG)


def forget() -> None:
    """Drop every client (tests that point the endpoints elsewhere between runs)."""
    for made in (dynamodb, lambda_client, kms):
        made.cache_clear()
