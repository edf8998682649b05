"""The OAuth state table: the nonces of signed states already used (``feishu_mirror.oauth_state``),
each until its state expires (TTL). Only the OAuth callback writes, once per state this app issued."""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from feishu_mirror.dynamodb.calls import is_condition_failure
from feishu_mirror.dynamodb.values import attribute_values

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient


class OAuthStateStore:
    """Single-use claims of OAuth states."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self.table_name = table_name

    def claim(self, nonce: str, expires_at: int) -> bool:
        """Mark a state used; False when it already was (a replayed callback)."""
        try:
            self._client.put_item(
                TableName=self.table_name,
                Item=attribute_values({"state": nonce, "expires_at": expires_at}),
                ConditionExpression="attribute_not_exists(#s)",
                ExpressionAttributeNames={"#s": "state"},
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            raise
        return True
