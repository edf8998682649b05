"""DynamoDB's wire format both ways: plain Python values in, items out as plain Python values.

Numbers read back exactly and as they read best: integral numbers as ``int``, others as ``Decimal``,
inside maps, lists and sets too (never ``float``). DynamoDB gives a large round number back with all
its digits (1E+45 as 46 of them), which boto3's own 38-digit deserializer refuses (``decimal.Rounded``),
so numbers are read here without its context. Writes of Feishu's values go through
``storable.stored_form`` first (numbers canonical), then ``attribute_values``.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef


class _ExactDeserializer(TypeDeserializer):
    """boto3's deserializer with numbers read exactly (see the module docstring)."""

    def _deserialize_n(self, value: str) -> Decimal:
        return Decimal(value)


_serializer = TypeSerializer()
_deserializer = _ExactDeserializer()


def attribute_value(value: Any) -> AttributeValueTypeDef:
    """One plain Python value (int, str, bool, bytes, list, map, set) as a DynamoDB attribute value."""
    return _serializer.serialize(value)


def attribute_values(values: Mapping[str, Any]) -> dict[str, AttributeValueTypeDef]:
    """Plain Python values by name as DynamoDB attribute values (an item, a key, expression values)."""
    return {name: _serializer.serialize(value) for name, value in values.items()}


def exact_numbers(value: Any) -> Any:
    """A deserialized value with every number as ``int`` when integral, else ``Decimal`` — inside maps,
    lists and sets too."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else value
    if isinstance(value, dict):
        return {key: exact_numbers(member) for key, member in value.items()}
    if isinstance(value, list):
        return [exact_numbers(member) for member in value]
    if isinstance(value, set):
        return {exact_numbers(member) for member in value}
    return value


def plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB item (or key) as plain Python values; the one way items are read."""
    return {name: exact_numbers(_deserializer.deserialize(value)) for name, value in item.items()}
