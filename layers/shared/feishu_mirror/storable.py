"""Feishu's JSON values as DynamoDB can hold them: the checks, the reduction and the item-size estimate.

Feishu's JSON may hold what DynamoDB refuses (all of it probed on DynamoDB Local): numbers with more
than 38 significant digits or beyond DynamoDB's range (magnitudes from 1E-130 to below 1E+126; NaN
and Infinity are no numbers at all), strings and map keys that are not valid Unicode (a JSON
``"\\ud800"`` escape decodes to a lone surrogate, which UTF-8 cannot encode), empty map keys, map keys
of 64 KB and more, values nested 32 levels deep or more, and items over 400 KB. ``fit`` decides,
before anything is written and always the same way for the same fields, which mirrored fields the
mirror keeps as sent and which it drops; the dropped ones are named, with the reason, in the item's
``mirror_reduced`` attribute. So no item can fail a write, and comparing a reduced item with its next
listing compares like with like.

Numbers are exact: JSON numbers with a fraction arrive as ``Decimal`` from their text (never through
``float``); a ``float`` handed in anyway becomes the ``Decimal`` of its shortest text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

# Why a field was dropped (the values of an item's ``mirror_reduced`` map).
NUMBER_OUT_OF_RANGE: Final = "number_out_of_range"
INVALID_TEXT: Final = "invalid_text"
EMPTY_KEY: Final = "empty_key"
KEY_TOO_LONG: Final = "key_too_long"
TOO_DEEP: Final = "too_deep"
TOO_LARGE: Final = "too_large"
UNSUPPORTED_VALUE: Final = "unsupported_value"

REDUCED_ATTRIBUTE: Final = "mirror_reduced"
MAX_ITEM_BYTES: Final = 400 * 1024  # DynamoDB's item size limit
# What a mirrored item's Feishu fields may take by estimate: the rest of 400 KB is left for the keys,
# the bookkeeping attributes (ids, times, the reduction marker) and any error of the estimate.
FIELD_BUDGET_BYTES: Final = 380_000
MAX_NESTING: Final = 31  # containers inside one attribute value; DynamoDB refuses 32
MAX_DIGITS: Final = 38
MAX_KEY_BYTES: Final = 65_535
_MIN_ADJUSTED, _MAX_ADJUSTED = -130, 125  # DynamoDB's magnitudes: 1E-130 up to 9.99…E+125
_MIN_EXPONENT = -165  # boto3's serializer context (Emin -128, 38 digits) refuses smaller last digits


def canonical_number(value: int | Decimal) -> int | Decimal | None:
    """``value`` in a form DynamoDB holds exactly (trailing zeros dropped), or None when it cannot.

    Ints of up to 38 digits stay ints; other numbers become a ``Decimal`` without trailing zeros, so a
    large round number fits in 38 significant digits. None: NaN, an infinity, more than 38
    significant digits, or a magnitude outside 1E-130 … 9.99…E+125.
    """
    if isinstance(value, int) and abs(value) < 10**MAX_DIGITS:
        return value
    number = Decimal(value)
    if not number.is_finite():
        return None
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite
    significant = len(digits)
    while significant > 1 and digits[significant - 1] == 0:
        significant -= 1
    exponent += len(digits) - significant
    digits = digits[:significant]
    if digits == (0,):
        return Decimal(0)
    adjusted = exponent + significant - 1
    if significant > MAX_DIGITS or exponent < _MIN_EXPONENT or not _MIN_ADJUSTED <= adjusted <= _MAX_ADJUSTED:
        return None
    return Decimal((sign, digits, exponent))


class _Unholdable(Exception):
    """A value DynamoDB cannot hold as sent; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _text(value: str) -> int:
    """The UTF-8 size of a string; raises for one that is not valid Unicode."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Unholdable(INVALID_TEXT) from None


def _number_size(value: int | Decimal) -> int:
    """DynamoDB's size of a number: a byte per two significant digits, plus one."""
    digits = len(str(abs(value))) if isinstance(value, int) else len(value.as_tuple().digits)
    return (digits + 1) // 2 + 1


def _storable(value: Any, depth: int) -> tuple[Any, int]:
    """``value`` as DynamoDB holds it, and its size by DynamoDB's rules; raises ``_Unholdable``."""
    if value is None or isinstance(value, bool):
        return value, 1
    if isinstance(value, str):
        return value, _text(value)
    if isinstance(value, float):
        value = Decimal(repr(value)) if math.isfinite(value) else Decimal("NaN")
    if isinstance(value, int | Decimal):
        number = canonical_number(value)
        if number is None:
            raise _Unholdable(NUMBER_OUT_OF_RANGE)
        return number, _number_size(number)
    if isinstance(value, Mapping):
        return _map(value, depth)
    if isinstance(value, list | tuple):
        return _list(value, depth)
    raise _Unholdable(UNSUPPORTED_VALUE)


def _map(value: Mapping[Any, Any], depth: int) -> tuple[dict[str, Any], int]:
    """A map: 3 bytes, and per member 1 byte, its name and its value."""
    if depth >= MAX_NESTING:
        raise _Unholdable(TOO_DEEP)
    out: dict[str, Any] = {}
    size = 3
    for key, member in value.items():
        if not isinstance(key, str):
            raise _Unholdable(UNSUPPORTED_VALUE)
        key_bytes = _text(key)
        if not key_bytes:
            raise _Unholdable(EMPTY_KEY)
        if key_bytes > MAX_KEY_BYTES:
            raise _Unholdable(KEY_TOO_LONG)
        out[key], member_size = _storable(member, depth + 1)
        size += 1 + key_bytes + member_size
    return out, size


def _list(value: list[Any] | tuple[Any, ...], depth: int) -> tuple[list[Any], int]:
    """A list: 3 bytes, and per member 1 byte and its value."""
    if depth >= MAX_NESTING:
        raise _Unholdable(TOO_DEEP)
    out: list[Any] = []
    size = 3
    for member in value:
        stored, member_size = _storable(member, depth + 1)
        out.append(stored)
        size += 1 + member_size
    return out, size


def fit(fields: Mapping[str, Any], budget: int = FIELD_BUDGET_BYTES) -> tuple[dict[str, Any], dict[str, str], int]:
    """The fields DynamoDB can hold, the dropped ones with their reasons, and the kept fields' size.

    A field holding anything DynamoDB refuses is dropped whole. If the rest is still larger than
    ``budget`` (estimated by DynamoDB's item-size rules), the largest fields go (ties by name) until it
    fits. Kept values are in stored form (numbers canonical, tuples as lists).
    """
    kept: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    reduced: dict[str, str] = {}
    for name in sorted(fields):
        try:
            kept[name], value_size = _storable(fields[name], 0)
        except _Unholdable as exc:
            reduced[name] = exc.reason
            continue
        sizes[name] = len(name.encode("utf-8")) + value_size
    total = sum(sizes.values())
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        if total <= budget:
            break
        del kept[name]
        reduced[name] = TOO_LARGE
        total -= sizes[name]
    return kept, dict(sorted(reduced.items())), total


def stored_form(values: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """A whole item as it is written — numbers canonical, so boto3 serializes any number ``fit`` kept or
    DynamoDB gave back (a round 50-digit number reads back as an int of 50 digits) — and its estimated
    size by DynamoDB's rules, attribute names included. Raises ``ValueError`` for a value ``fit`` would
    have dropped."""
    out: dict[str, Any] = {}
    size = 0
    for name, value in values.items():
        try:
            out[name], value_size = _storable(value, 0)
        except _Unholdable as exc:
            raise ValueError(f"attribute {name} cannot be stored: {exc.reason}") from None
        size += len(name.encode("utf-8")) + value_size
    return out, size


def _decimal(number: int | Decimal | float) -> Decimal:
    """A number as a ``Decimal``; a float by its shortest text, as JSON would have carried it."""
    return Decimal(repr(number)) if isinstance(number, float) else Decimal(number)


def same_value(a: Any, b: Any) -> bool:
    """JSON equality as the mirror sees it: numbers by value (``1 == Decimal("1.0")``), a bool never
    equal to a number, maps and lists member by member."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | Decimal | float) and isinstance(b, int | Decimal | float):
        return _decimal(a) == _decimal(b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping | list | tuple | int | Decimal | float) or isinstance(
        b, Mapping | list | tuple | int | Decimal | float
    ):
        return False
    return bool(a == b)
