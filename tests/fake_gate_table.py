"""The rate gate's table in memory: a DynamoDB client that answers exactly the two conditional updates
``DynamoRateGate`` sends (take the next slot of a busy API; take the slot now on a quiet one), with
DynamoDB's semantics (the condition on the stored item, ``ConditionalCheckFailedException`` when it
fails, ``UPDATED_NEW``), so the real gate runs in unit tests and in simulations without DynamoDB.
Anything else it is sent raises, so a change of the gate's requests cannot go unnoticed (the gate's
integration tests run the same requests on DynamoDB Local).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

BUSY_UPDATE = "SET next_at = next_at + :i, expires_at = :ttl"
BUSY_CONDITION = "next_at > :now"
QUIET_UPDATE = "SET next_at = :next, expires_at = :ttl"
QUIET_CONDITION = "attribute_not_exists(next_at) OR next_at <= :now"


def _number(value: dict[str, str]) -> int:
    return int(value["N"])


class FakeGateTable:
    """The gate's items (``bucket`` → ``next_at`` in µs); ``on_request`` sees every request (a meter)."""

    def __init__(self, *, on_request: Callable[[str, bool], None] | None = None) -> None:
        self.next_at: dict[str, int] = {}
        self.updates = 0
        self.failed_updates = 0
        self._on_request = on_request

    def update_item(self, **request: Any) -> dict[str, Any]:
        """One of the gate's two conditional updates."""
        bucket = request["Key"]["bucket"]["S"]
        values = request["ExpressionAttributeValues"]
        now = _number(values[":now"])
        stored = self.next_at.get(bucket)
        expression, condition = request["UpdateExpression"], request["ConditionExpression"]
        self.updates += 1
        if (expression, condition) == (BUSY_UPDATE, BUSY_CONDITION):
            passed = stored is not None and stored > now
            new = (stored or 0) + _number(values[":i"])
        elif (expression, condition) == (QUIET_UPDATE, QUIET_CONDITION):
            passed = stored is None or stored <= now
            new = _number(values[":next"])
        else:
            raise NotImplementedError(f"the fake gate table does not answer {expression!r} if {condition!r}")
        if passed:
            self.next_at[bucket] = new  # applied at once: the request is atomic, whatever waits after it
        else:
            self.failed_updates += 1
        if self._on_request is not None:
            self._on_request(bucket, passed)
        if not passed:
            error = {"Error": {"Code": "ConditionalCheckFailedException", "Message": "The conditional request failed"}}
            raise ClientError(error, "UpdateItem")  # type: ignore[arg-type]
        if request.get("ReturnValues") == "UPDATED_NEW":
            return {"Attributes": {"next_at": {"N": str(new)}, "expires_at": values[":ttl"]}}
        return {}
