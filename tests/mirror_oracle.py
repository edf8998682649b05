"""Does the mirror hold what Feishu sent? An oracle that does not lean on the mirror's own rules.

Each mirrored field Feishu sent with its documented type is either stored equal to what was sent
(numbers by value: ``1`` and ``1.0``, ``Decimal`` and the float text it came from), or absent and named
in the item's ``mirror_reduced`` with a reason that holds on its own terms: DynamoDB Local refuses the
value (written raw, ``N`` as the number's own text, past boto3's serializer), or the value has a lone
surrogate (which DynamoDB Local would take but UTF-8 cannot carry), or the event's JSON is too large
for an item. No stored string holds a lone surrogate, and nothing is marked that was not sent.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from feishu_mirror.storable import same_value
from local.feishu_sim import json_bytes

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

LARGE_JSON_BYTES = 300_000  # an item whose fields' JSON is smaller fits DynamoDB's 400 KB with room to spare


def raw_attribute(value: Any) -> dict[str, Any]:  # noqa: PLR0911 - one branch per JSON type
    """A JSON value as a DynamoDB attribute value, numbers as their own text (no checks of our own)."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, float):
        return {"N": repr(value) if math.isfinite(value) else "NaN"}
    if isinstance(value, int | Decimal):
        return {"N": str(value)}
    if isinstance(value, Mapping):
        return {"M": {str(k): raw_attribute(v) for k, v in value.items()}}
    return {"L": [raw_attribute(v) for v in value]}


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (map keys included) cannot be encoded as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, Mapping):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_lone_surrogate(v) for v in value)
    return False


class Oracle:
    """Checks stored items against what Feishu sent; writes scratch items into ``table`` to ask DynamoDB."""

    def __init__(self, client: DynamoDBClient, table: str, key: tuple[str, str]) -> None:
        self._client, self._table, self._key = client, table, key

    def refuses(self, value: Any) -> bool:
        """Whether DynamoDB Local refuses ``value`` as an attribute of a small item."""
        partition, sort = self._key
        try:
            item = {partition: {"S": "oracle-scratch"}, sort: {"S": uuid.uuid4().hex}, "v": raw_attribute(value)}
        except ValueError:  # an int too long for Python's own str(): no store could take it as a number
            return True
        try:
            self._client.put_item(TableName=self._table, Item=item)
        except ClientError as exc:
            return exc.response.get("Error", {}).get("Code") == "ValidationException"
        self._client.delete_item(TableName=self._table, Key={partition: item[partition], sort: item[sort]})
        return False

    def problems(self, sent: Mapping[str, Any], stored: Mapping[str, Any], names: Mapping[str, type]) -> list[str]:
        """What is wrong with ``stored`` as the mirror of ``sent`` (empty when nothing)."""
        expected = {n: sent[n] for n, kind in names.items() if n in sent and type(sent[n]) is kind}
        marked = stored.get("mirror_reduced") or {}
        found: list[str] = []
        for name, value in expected.items():
            reason = marked.get(name)
            if reason is None:
                if name not in stored or not same_value(stored[name], value):
                    found.append(f"{name}: stored {stored.get(name)!r:.200} != sent {value!r:.200}")
            elif name in stored:
                found.append(f"{name}: marked {reason} yet stored")
            elif not self._holds(reason, value, expected):
                found.append(f"{name}: marked {reason}, which does not hold for {value!r:.200}")
        found += [
            f"{name}: stored though not sent with its type" for name in names if name in stored and name not in expected
        ]
        found += [f"{name}: marked though not sent" for name in marked if name not in expected]
        found += [f"{name}: a lone surrogate stored" for name in names if has_lone_surrogate(stored.get(name))]
        return found

    def _holds(self, reason: str, value: Any, fields: Mapping[str, Any]) -> bool:
        if reason == "invalid_text":
            return has_lone_surrogate(value)
        if reason == "too_large":
            return len(json_bytes(dict(fields))) > LARGE_JSON_BYTES
        return self.refuses(value)
