"""Feishu-shaped calendars and events generated from the official SDK's models (lark-oapi), not ours.

Every field a model declares in its ``_types`` (``CalendarEvent``, ``Calendar`` and what they nest:
``TimeInfo``, ``EventLocation``, ``Vchat``, ``Reminder``, ``Schema``, ``CalendarEventAttendee``, …) gets a
value of its declared type, so a field a new SDK version adds is generated without a change here. Inside
the nested objects go extra keys with arbitrary JSON (Feishu may add fields anywhere). Values span what
JSON can carry: floats as exact ``Decimal`` text (coordinates, 30-digit fractions, exponents), integers
past 64 bits, CJK and emoji, control characters, empty strings, lists and maps. With ``odd`` > 0 some
values are what DynamoDB cannot hold as sent: lone surrogates, numbers past 38 digits or out of range,
NaN, empty map keys, nesting past 32 levels, strings past 400 KB.

Only the ids and the few fields Feishu's semantics hang on are shaped by hand: calendar ids, event ids
in Feishu's shapes (``<uid>_0`` for a single event or a recurring master, ``<uid>_<original start>`` for
an exception), ``type``/``role``/``permissions`` from their documented values, and recurring masters
with modified and cancelled occurrences.

One generator, two sources of choices: a hypothesis ``draw`` (property tests: derandomized, shrinking)
or a seeded ``random.Random`` (fault schedules).
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import sys
import types
import typing
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Protocol

from hypothesis import strategies as st


def _sdk_model(module: str, name: str) -> type:
    """A class of lark-oapi's calendar models, loaded without running ``lark_oapi/__init__`` and
    ``lark_oapi/api/__init__`` (they import every service and the websocket client: seconds per test
    session). Bare package modules stand in for the two while the models load; a later ``import
    lark_oapi`` anywhere gets the real package."""
    if "lark_oapi" in sys.modules:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    spec = importlib.util.find_spec("lark_oapi")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("lark-oapi is not installed (make setup)")
    root = list(spec.submodule_search_locations)
    stand_ins = {"lark_oapi": root, "lark_oapi.api": [f"{path}/api" for path in root]}
    for package, paths in stand_ins.items():
        stand_in = types.ModuleType(package)
        stand_in.__path__ = paths
        sys.modules[package] = stand_in
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    finally:
        for package in stand_ins:
            del sys.modules[package]


_MODELS = "lark_oapi.api.calendar.v4.model"
SdkCalendar = _sdk_model(f"{_MODELS}.calendar", "Calendar")
SdkEvent = _sdk_model(f"{_MODELS}.calendar_event", "CalendarEvent")
CALENDAR_TYPES: dict[str, Any] = SdkCalendar._types  # type: ignore[attr-defined]
EVENT_TYPES: dict[str, Any] = SdkEvent._types  # type: ignore[attr-defined]

# Characters drawn for text: ASCII, CJK, emoji (outside the BMP), JSON's escapes, controls, BOM, RTL.
ALPHABET = 'aZ0 _-:/会议室周会议程日程北京上海🙂📅🎉👩\u200d💻é\u00fc"\\\x00\t\n\u2028\u202e\ufeff'
LONE_SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff", "\ud83d")
RRULES = (
    "FREQ=WEEKLY;INTERVAL=1;COUNT=6",
    "FREQ=DAILY;UNTIL=20260301T000000Z",
    "FREQ=MONTHLY;BYMONTHDAY=15",
    "FREQ=WEEKLY;BYDAY=MO,WE,FR;INTERVAL=2",
)
TIMEZONES = ("Asia/Shanghai", "UTC", "America/Los_Angeles", "Europe/Berlin")
PERMISSIONS = ("private", "show_only_free_busy", "public")
FIRST_START = 1_767_225_600  # 2026-01-01T00:00:00Z
OVERSIZED = 420_000  # bytes: past DynamoDB's 400 KB item on its own


class Source(Protocol):
    """Where choices come from."""

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]; sources shrink towards ``low``."""

    def text(self, max_size: int) -> str:
        """A string of up to ``max_size`` characters of ``ALPHABET``."""


class RandomSource:
    """Choices from a seeded ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def text(self, max_size: int) -> str:
        return "".join(self._rng.choice(ALPHABET) for _ in range(self._rng.randint(0, max_size)))


class DrawSource:
    """Choices drawn by hypothesis."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def text(self, max_size: int) -> str:
        return self._draw(st.text(alphabet=ALPHABET, max_size=max_size))


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and isinstance(getattr(kind, "_types", None), dict)


class FeishuData:
    """Generates Feishu's JSON for calendars and events; ``odd`` is how often a value is one DynamoDB
    cannot hold as sent (0 for none)."""

    def __init__(self, source: Source, *, odd: float = 0.0, max_depth: int = 4) -> None:
        self.source = source
        self.odd = odd
        self.max_depth = max_depth
        self._uids = 0

    # ------------------------------------------------------------------ choices
    def chance(self, probability: float) -> bool:
        """True with ``probability`` (never when it is 0)."""
        return probability > 0 and self.source.integer(0, 9999) < probability * 10_000

    def pick[T](self, options: Sequence[T]) -> T:
        """One of ``options``, the first when shrinking."""
        return options[self.source.integer(0, len(options) - 1)]

    def oddity(self, kinds: int, probability: float) -> int | None:
        """Which of ``kinds`` odd values to make (each with ``probability``), or None; one choice."""
        if self.odd <= 0:
            return None
        drawn = self.source.integer(0, 9999)
        threshold = probability * self.odd * 10_000
        return int(drawn // threshold) if drawn < kinds * threshold else None

    def subset(self, names: Sequence[str], presence: float) -> list[str]:
        """Some of ``names``: each with a quarter, a half or three quarters' chance (``presence`` below,
        at or above 0.5); one or two choices for all of them."""
        if not names:
            return []
        every = 2 ** len(names) - 1
        mask = self.source.integer(0, every)
        if presence > 0.5:
            mask |= self.source.integer(0, every)
        elif presence < 0.5:
            mask &= self.source.integer(0, every)
        return [name for n, name in enumerate(names) if mask >> n & 1]

    # ------------------------------------------------------------------ values by declared type
    def text(self, max_size: int = 12) -> str:
        """A string; sometimes oversized, sometimes with a lone surrogate (when odd)."""
        value = self.source.text(max_size)
        odd = self.oddity(2, 0.15)
        if odd == 0:
            value += LONE_SURROGATES[len(value) % len(LONE_SURROGATES)]
        elif odd == 1:
            unit = value or "议程"
            value = unit * (OVERSIZED // len(unit.encode("utf-8", "surrogatepass")) + 1)
        return value

    def integer(self) -> int:
        """An integer of any size JSON carries: small, int32, int64, past 64 bits, past 38 digits (when odd)."""
        kind = self.source.integer(0, 3)
        bound = (10**3, 2**31, 2**63, 2**100)[kind]
        if kind == 3 and self.oddity(1, 0.5) is not None:
            bound = 10**45  # mostly past 38 digits: no room for them in DynamoDB
        return self.source.integer(-bound, bound)

    def number(self) -> Decimal | float:
        """A JSON number with a fraction or an exponent, as the exact Decimal of its text (sometimes a float)."""
        kind = self.source.integer(0, 3)
        odd = self.oddity(3, 0.1)
        if odd is not None:  # no number for DynamoDB: NaN, out of range, past 38 digits
            return Decimal(("NaN", "1E+130", "1.000000000000000000000000000000000000001")[odd])
        if kind == 0:  # a coordinate, as Feishu's EventLocation carries them
            return Decimal(self.source.integer(-180_0000000, 180_0000000)).scaleb(-7)
        if kind == 1:  # more digits than a float holds
            return Decimal(self.source.integer(0, 10**30)).scaleb(-self.source.integer(1, 35))
        if kind == 2:  # exponents
            return Decimal(self.source.integer(1, 99)).scaleb(self.source.integer(-100, 100))
        return float(self.source.integer(-(10**6), 10**6)) / 64  # a float, written in its shortest form

    def json_value(self, depth: int = 0) -> Any:  # noqa: PLR0911 - one branch per JSON type
        """Arbitrary JSON: scalars, lists and maps (awkward keys, deep nesting when odd)."""
        if self.oddity(1, 0.05) is not None:
            return self.deep(33 + depth)
        kind = self.source.integer(0, 7 if depth < self.max_depth else 5)
        scalars = (None, True, False)
        if kind <= 2:
            return scalars[kind]
        if kind == 3:
            return self.integer()
        if kind == 4:
            return self.number()
        if kind == 5:
            return self.text()
        if kind == 6:
            return [self.json_value(depth + 1) for _ in range(self.source.integer(0, 3))]
        return {self.key(): self.json_value(depth + 1) for _ in range(self.source.integer(0, 3))}

    def key(self) -> str:
        """A map key: usually a name, sometimes empty (DynamoDB refuses that) when odd."""
        if self.oddity(1, 0.05) is not None:
            return ""
        return self.source.text(8) or "k"

    def deep(self, levels: int) -> Any:
        """A value nested ``levels`` maps and lists deep."""
        value: Any = self.text(4)
        for level in range(levels):
            value = {"n": value} if level % 2 else [value]
        return value

    def of_type(self, kind: Any, depth: int) -> Any:  # noqa: PLR0911 - one branch per declared type
        """A value of an SDK-declared type (``str``, ``int``, ``float``, ``bool``, ``List[...]``, a model)."""
        if kind is str:
            return self.text()
        if kind is bool:
            return self.chance(0.5)
        if kind is int:
            return self.integer()
        if kind is float:
            return self.number()
        if typing.get_origin(kind) is list:
            (member,) = typing.get_args(kind)
            return [self.of_type(member, depth + 1) for _ in range(self.source.integer(0, 2))]
        if _is_model(kind):
            return self.model(kind, depth + 1)
        return self.json_value(depth)

    def model(self, model: type, depth: int = 0, *, presence: float = 0.5) -> dict[str, Any]:
        """An object of an SDK model: each declared field present with ``presence``, plus extra JSON."""
        fields: dict[str, Any] = {}
        if depth > self.max_depth:
            return fields
        types: dict[str, Any] = model._types  # type: ignore[attr-defined]
        for name in self.subset(list(types), presence):
            fields[name] = self.of_type(types[name], depth)
        for _ in range(self.source.integer(0, 2) if depth else 0):  # Feishu may add fields anywhere
            fields.setdefault(self.key(), self.json_value(depth))
        return fields

    # ------------------------------------------------------------------ Feishu's shapes
    def uid(self) -> str:
        """An event uid like Feishu's (a UUID)."""
        self._uids += 1
        return f"{self.source.integer(0, 2**64):016x}-{self._uids:04x}-4a6b-9c1d-{self.source.integer(0, 2**48):012x}"

    def calendar(self, *, readable: bool | None = None) -> dict[str, Any]:
        """A calendar's fields as the list API returns them (no calendar_id, no is_deleted); ``readable``:
        one whose events the user can list (None: either)."""
        fields = self.model(SdkCalendar, presence=0.75)
        for name in ("calendar_id", "is_deleted"):
            fields.pop(name, None)
        if readable is None:
            readable = self.chance(0.7)
        kinds: tuple[str, ...] = ("shared", "resource") if readable else ("google", "exchange", "shared")
        roles: tuple[str, ...] = ("owner", "writer", "reader") if readable else ("free_busy_reader",)
        fields["type"] = self.pick(kinds)
        fields["role"] = self.pick(roles)
        fields["permissions"] = self.pick(PERMISSIONS)
        fields["is_third_party"] = fields["type"] in ("google", "exchange")
        return {name: value for name, value in fields.items() if name in CALENDAR_TYPES}

    def times(self, start: int) -> dict[str, Any]:
        """``start_time``/``end_time`` (TimeInfo) of an occurrence starting at ``start``: a timestamp with
        a timezone, or an all-day date; with the model's other fields and extra JSON sometimes."""
        if self.chance(0.2):
            day = f"2026-{self.source.integer(1, 12):02d}-{self.source.integer(1, 28):02d}"
            return {"start_time": {"date": day}, "end_time": {"date": day}}
        timezone = self.pick(TIMEZONES)
        end = start + self.pick((900, 1800, 3600))
        extra = self.model(EVENT_TYPES["start_time"], 1, presence=0.25)
        return {
            "start_time": {**extra, "timestamp": str(start), "timezone": timezone},
            "end_time": {"timestamp": str(end), "timezone": timezone},
        }

    def event(self, event_id: str, start: int, **shape: Any) -> dict[str, Any]:
        """One event's fields (every CalendarEvent field may be there) with Feishu's id and ``shape``."""
        fields = self.model(SdkEvent, presence=0.5)
        fields.pop("event_id", None)
        fields |= self.times(start)
        fields["status"] = self.pick(("confirmed", "tentative"))
        fields["recurrence"] = ""
        fields["is_exception"] = False
        fields["recurring_event_id"] = ""
        return {**fields, **shape, "event_id": event_id}

    def events(self, count: int) -> list[dict[str, Any]]:
        """``count`` single events and, sometimes, a recurring master with modified and cancelled occurrences."""
        events = []
        for _ in range(count):
            start = FIRST_START + self.source.integer(0, 365 * 48) * 1800
            events.append(self.event(f"{self.uid()}_0", start))
        if self.chance(0.6):
            events += self.recurring(self.source.integer(0, 3))
        return events

    def recurring(self, exceptions: int) -> list[dict[str, Any]]:
        """A recurring master and ``exceptions`` of its occurrences, modified or cancelled."""
        uid = self.uid()
        first = FIRST_START + self.source.integer(0, 90) * 86400
        master = self.event(f"{uid}_0", first, recurrence=self.pick(RRULES))
        found = [master]
        for n in range(1, exceptions + 1):
            start = first + n * 7 * 86400
            status = self.pick(("cancelled", "confirmed", "tentative"))
            found.append(
                self.event(
                    f"{uid}_{start}",
                    start,
                    status=status,
                    is_exception=True,
                    recurring_event_id=master["event_id"],
                )
            )
        return found
