"""DynamoDB's capacity units as AWS bills them (on demand: request units), from the items a request touches.

For in-memory stand-ins of the tables, and for meters around real requests. The rules (AWS, *Read/write
capacity mode*, *Capacity management for transactions*, *Global secondary indexes*):

- **Item size**: attribute names and values; strings by their UTF-8 bytes, binary by its bytes, a number
  a byte per two significant digits plus one, booleans and null one byte, a list or map 3 bytes plus a
  byte per element, a set the sum of its elements.
- **Writes**: a ``PutItem``, ``UpdateItem`` or ``DeleteItem`` costs one unit per KB of the larger of the
  item before and after (at least one), also when its condition fails (then of the item as it is). In
  ``TransactWriteItems`` every action costs twice that, a ``ConditionCheck`` included (of the item it
  checks).
- **Global secondary indexes**: a write that adds an item to an index costs one unit per KB of the index
  entry (its keys, the table's keys and the projected attributes), one that removes it likewise, one
  that changes the index key both, one that changes only projected attributes one write, and one that
  changes nothing the index holds none. Index writes are not doubled by transactions.
- **Reads**: a strongly consistent ``GetItem`` one unit per 4 KB (at least one, also for a missing item);
  ``BatchGetItem`` the same per item found; a ``Query`` one unit per 4 KB of all the items it read, per
  page (at least one); eventually consistent reads half.

DynamoDB Local reports non-transactional requests this way, but not transactions (it charges each table
of a transaction 4 units per KB of its largest item, whatever the number of items), so transactions are
counted here from their items.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import Binary

WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096


def _number_size(value: int | Decimal) -> int:
    if type(value) is int:
        digits = len(str(abs(value)).rstrip("0")) or 1
    else:
        digits = len(Decimal(value).normalize().as_tuple().digits) if value else 1
    return (digits + 1) // 2 + 1


def value_size(value: Any) -> int:
    """The size DynamoDB counts for one attribute value."""
    kind = type(value)
    if kind is str:
        return len(value) if value.isascii() else len(value.encode("utf-8"))
    if kind is bool or value is None:
        return 1
    if kind is int or kind is Decimal:
        return _number_size(value)
    if kind is dict:
        return 3 + sum(
            1 + (len(k) if k.isascii() else len(k.encode("utf-8"))) + value_size(v) for k, v in value.items()
        )
    if kind is list:
        return 3 + sum(1 + value_size(member) for member in value)
    return _other_size(value)


def _other_size(value: Any) -> int:
    """The size of the rarer kinds of values (binary, sets, other mappings and sequences, floats)."""
    if isinstance(value, bytes | bytearray | Binary):
        raw: Any = getattr(value, "value", value)  # boto3's stubs do not declare Binary's payload
        return len(bytes(raw))
    if isinstance(value, float):
        return _number_size(Decimal(repr(value)))
    if isinstance(value, int | Decimal):
        return _number_size(value)
    if isinstance(value, set | frozenset):
        return sum(value_size(member) for member in value)
    if isinstance(value, Mapping):
        return 3 + sum(1 + len(str(k).encode("utf-8")) + value_size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return 3 + sum(1 + value_size(member) for member in value)
    raise TypeError(f"not a DynamoDB value: {type(value).__name__}")


def item_size(item: Mapping[str, Any] | None) -> int:
    """The size DynamoDB counts for a whole item (0 for no item)."""
    if not item:
        return 0
    return sum((len(name) if name.isascii() else len(name.encode("utf-8"))) + value_size(v) for name, v in item.items())


def write_units(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, *, transactional: bool = False
) -> int:
    """A single-item write: a unit per KB of the larger image (at least one), doubled in a transaction."""
    units = max(1, math.ceil(max(item_size(before), item_size(after)) / WRITE_UNIT_BYTES))
    return units * (2 if transactional else 1)


def read_units(size: int, *, consistent: bool = True) -> float:
    """One read of ``size`` bytes (``GetItem``, a ``BatchGetItem`` item, a ``Query`` page's total)."""
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


@dataclass(frozen=True, slots=True)
class Index:
    """A global secondary index: its key attributes and the non-key attributes it projects."""

    name: str
    keys: tuple[str, ...]
    projected: tuple[str, ...]  # besides the table's and the index's keys
    table_keys: tuple[str, ...]

    def entry(self, item: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The index entry of ``item``, or None when the item is not in the index (sparse)."""
        if not item or any(key not in item for key in self.keys):
            return None
        names = (*self.table_keys, *self.keys, *self.projected)
        return {name: item[name] for name in names if name in item}

    def write_units(self, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> int:
        """What a change of one table item from ``before`` to ``after`` costs in this index."""
        old, new = self.entry(before), self.entry(after)
        if old == new:
            return 0
        if old is None or new is None:
            return max(1, math.ceil(item_size(old or new) / WRITE_UNIT_BYTES))
        moved = any(old.get(key) != new.get(key) for key in self.keys)
        units = max(1, math.ceil(item_size(new) / WRITE_UNIT_BYTES))
        return units + (max(1, math.ceil(item_size(old) / WRITE_UNIT_BYTES)) if moved else 0)


@dataclass
class CapacityMeter:
    """Request units and requests per table (and per index), as the bill would count them."""

    write_units: Counter[str] = field(default_factory=Counter)  # whole units: every request costs whole units
    read_units: dict[str, float] = field(default_factory=dict)  # eventually consistent reads cost half
    requests: Counter[str] = field(default_factory=Counter)  # "<table> <Operation>"

    def write(self, table: str, operation: str, units: int) -> None:
        """Charge write units to ``table`` (or ``table/index``)."""
        self.write_units[table] += units
        self.requests[f"{table} {operation}"] += 1

    def read(self, table: str, operation: str, units: float) -> None:
        """Charge read units to ``table``."""
        self.read_units[table] = self.read_units.get(table, 0.0) + units
        self.requests[f"{table} {operation}"] += 1

    @property
    def total_write_units(self) -> float:
        """All write units, indexes included."""
        return float(sum(self.write_units.values()))

    @property
    def total_read_units(self) -> float:
        """All read units."""
        return float(sum(self.read_units.values()))

    def merged(self, others: Iterable[CapacityMeter]) -> CapacityMeter:
        """This meter plus ``others``."""
        out = CapacityMeter(Counter(self.write_units), dict(self.read_units), Counter(self.requests))
        for other in others:
            out.write_units.update(other.write_units)
            for table, units in other.read_units.items():
                out.read_units[table] = out.read_units.get(table, 0.0) + units
            out.requests.update(other.requests)
        return out
