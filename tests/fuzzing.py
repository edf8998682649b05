"""Hypothesis strategies and settings for fuzzing the callback (shared by the unit and integration tiers).

The strategies aim at what the callback parses: raw bodies, header maps as API Gateway passes them,
JSON documents of any shape and depth, and Feishu-shaped events of both kinds the mirror acts on
(``calendar.calendar.changed_v4`` and ``calendar.calendar.event.changed_v4``, with its ``calendar_id``
and its gray-release fields) whose known fields hold wrong types — also wrapped in *valid* crypto
(encrypted and signed with the right key), so the checks behind the signature are fuzzed too.
Settings are derandomized and keep no example database: reruns of the same pytest session are exact
(a session that collects other tests as well can draw other examples). ``FUZZ_EXAMPLES_SCALE``
multiplies every example count (``make soak`` runs ten times as many).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from feishu_mirror import crypto
from feishu_mirror.callback import CALENDAR_CHANGED, EVENT_CHANGED, MAX_BODY_BYTES
from feishu_mirror.identifiers import MAX_CALENDAR_ID_BYTES
from tests import fuzz_report

_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
_SCALE = fuzz_report.scale()
UNIT = settings(
    max_examples=200 * _SCALE, deadline=None, derandomize=True, database=None, suppress_health_check=_SLOW_DATA
)
INTEGRATION = settings(
    max_examples=80 * _SCALE,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[*_SLOW_DATA, HealthCheck.function_scoped_fixture],
)

SIGNATURE_HEADERS = ("x-lark-request-timestamp", "x-lark-request-nonce", "x-lark-signature")
REJECTION_STATUSES = frozenset({400, 401, 403, 413})

# Any code point, lone surrogates included (JSON's "\ud800" escapes decode to them); the awkward ones
# (surrogates, NUL, BOM, line separators, non-BMP, RTL override) are drawn far more often than chance.
AWKWARD_CHARACTERS = ["\ud800", "\udfff", "\x00", "\ufeff", "\u2028", "\u202e", "\U0001f600", "é", "中", '"', "\\"]
# (Built from a list: st.text drops lone surrogates whatever its alphabet.)
any_text = st.lists(
    st.characters(codec=None, exclude_categories=()) | st.sampled_from(AWKWARD_CHARACTERS), max_size=40
).map("".join)
utf8_text = st.text(max_size=40)
big_ints = (
    st.integers(min_value=-(10**400), max_value=10**400)
    | st.integers(min_value=10**308, max_value=10**400)  # past what a float can hold
    | st.integers(min_value=-(10**400), max_value=-(10**308))
)
json_scalars = st.none() | st.booleans() | st.integers() | big_ints | st.floats() | any_text
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=16,
)


@st.composite
def any_case(draw: st.DrawFn, name: str) -> str:
    """``name`` with each letter upper- or lower-cased."""
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if flip else c for c, flip in zip(name, flips, strict=True))


header_names = st.sampled_from(SIGNATURE_HEADERS).flatmap(any_case) | st.sampled_from(SIGNATURE_HEADERS) | utf8_text
# API Gateway joins repeated headers with commas; values also arrive empty, padded or as garbage.
header_values = (
    any_text
    | st.lists(utf8_text, min_size=2, max_size=3).map(",".join)
    | big_ints.map(str)
    | st.sampled_from(["", " ", "0", "-1", "1e9", "１７００００００００", "nan", "0" * 64, "f" * 64])
)
# A full set of the three signature headers (so the signature code runs) with any values, maybe more.
signature_header_sets = st.fixed_dictionaries(dict.fromkeys(SIGNATURE_HEADERS, header_values))
header_maps = st.dictionaries(header_names, header_values, max_size=5) | st.builds(
    lambda full, extra: {**extra, **full},
    signature_header_sets,
    st.dictionaries(header_names, header_values, max_size=3),
)


class Blob(bytes):
    """Bytes with a short ``repr``, so a failing example of 100 KiB prints as one line."""

    def __repr__(self) -> str:
        return f"Blob({len(self)} bytes: {bytes(self[:24])!r}...{bytes(self[-8:])!r})"


@st.composite
def nested_json(draw: st.DrawFn, max_depth: int = 60_000) -> Blob:
    """Arrays and objects nested ``depth`` deep (up to past Python's recursion limit), under the size cap."""
    depth = draw(st.integers(min_value=1, max_value=max_depth))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"encrypt":[', b"]}")]))
    depth = min(depth, (MAX_BODY_BYTES - 16) // (len(opener) + len(closer)))
    return Blob(opener * depth + b"0" + closer * depth)


def encoded_json(value: Any, encoding: str, ensure_ascii: bool) -> bytes:
    """``value`` as JSON text in ``encoding`` (lone surrogates pass through as invalid UTF-8)."""
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    errors = "surrogatepass" if encoding.startswith("utf") else "replace"
    return text.encode(encoding, errors)


encodings = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1", "gb18030"])

# ------------------------------------------------------------------ Feishu-shaped payloads


def calendar_changed(
    token: str, app_id: str, delivery_id: str = "evt-fuzz", open_ids: tuple[str, ...] = ("ou_1",)
) -> dict[str, Any]:
    """A well-formed schema 2.0 ``calendar.calendar.changed_v4`` payload (``delivery_id``: its ``header.event_id``)."""
    return {
        "schema": "2.0",
        "header": {
            "event_id": delivery_id,
            "event_type": CALENDAR_CHANGED,
            "create_time": "1700000000000",
            "token": token,
            "app_id": app_id,
            "tenant_key": "tenant",
        },
        "event": {"user_id_list": [{"open_id": o, "union_id": "on_x", "user_id": "u"} for o in open_ids]},
    }


CALENDAR_ID = "feishu.cn_fuzz0123456789@group.calendar.feishu.cn"
CALENDAR_EVENT_ID = "75d28f9b-e35c-4230-8a83-4a661497db54_0"


def calendar_event_changed(
    token: str,
    app_id: str,
    delivery_id: str = "evt-fuzz",
    open_ids: tuple[str, ...] = ("ou_1",),
    calendar_id: str = CALENDAR_ID,
    *,
    gray: bool = True,
) -> dict[str, Any]:
    """A well-formed schema 2.0 ``calendar.calendar.event.changed_v4`` payload; ``gray``: with the gray-release
    fields (``calendar_event_id``, ``change_type``, ``rsvp_infos``), which Feishu may leave out."""
    payload = calendar_changed(token, app_id, delivery_id, open_ids)
    payload["header"]["event_type"] = EVENT_CHANGED
    payload["event"]["calendar_id"] = calendar_id
    if gray:
        payload["event"].update(
            calendar_event_id=CALENDAR_EVENT_ID,
            change_type="rsvp",
            rsvp_infos=[
                {"from_user_id": {"open_id": (*open_ids, "ou_1")[0], "union_id": "on_x"}, "rsvp_status": "accept"}
            ],
        )
    return payload


_MISSING = object()
# Values that a known field may hold instead of the right one: wrong types, empty, huge, hostile text.
present_wrong_values = json_values | st.sampled_from(
    ["", "x" * 129, "x" * 5000, 0, -1, 2.0, True, None, [], {}, ["evt"], {"open_id": "ou_1"}]
)
wrong_values = present_wrong_values | st.just(_MISSING)  # _MISSING: the field is left out
user_entries = (
    st.fixed_dictionaries({}, optional={"open_id": st.just("ou_1") | present_wrong_values})
    | json_values
    | st.sampled_from([1, "ou_1", None])
)


def near_misses(right: str) -> st.SearchStrategy[str]:
    """Strings one slip away from ``right``: case, padding, truncation, a NUL or a surrogate appended."""
    return st.sampled_from([right.upper(), f" {right}", right[:-1], right + "\x00", right + "\ud800", right + "x"])


# calendar_id: valid ids (up to the limit of 512 bytes of UTF-8), and one slip from valid: control
# characters, format characters, line separators, lone surrogates, one past the limit.
valid_calendar_ids = st.sampled_from(
    [CALENDAR_ID, "c" * MAX_CALENDAR_ID_BYTES, "日" * (MAX_CALENDAR_ID_BYTES // 3), "日历 #1", "x"]
) | st.text(st.characters(categories=["L", "N", "P", "S"]) | st.just(" "), min_size=1, max_size=40)
bad_calendar_ids = st.sampled_from(
    [
        "c" * (MAX_CALENDAR_ID_BYTES + 1),
        "日" * (MAX_CALENDAR_ID_BYTES // 3 + 1),  # within 512 characters, past 512 bytes
        CALENDAR_ID + "\x00",
        "\x1f" + CALENDAR_ID,
        CALENDAR_ID[:8] + "\x7f" + CALENDAR_ID[8:],
        CALENDAR_ID + "\n",
        CALENDAR_ID + "\u2028",
        CALENDAR_ID + "\u200b",
        "\ufeff" + CALENDAR_ID,
        CALENDAR_ID + "\ud800",
        "\udfff",
        " \t ",
    ]
)
# Half valid, so that the acceptance of event changes is fuzzed as much as their refusal.
calendar_id_values = valid_calendar_ids | st.one_of(bad_calendar_ids, any_text, wrong_values)
# The gray-release fields: right, one slip from right, wrong types, or left out (wrong_values has _MISSING).
rsvp_infos = st.fixed_dictionaries(
    {
        "from_user_id": st.fixed_dictionaries({"open_id": st.just("ou_1"), "union_id": st.just("on_x")}),
        "rsvp_status": st.sampled_from(["accept", "decline", "tentative"]) | any_text,
    }
)
GRAY_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "calendar_event_id": st.just(CALENDAR_EVENT_ID) | any_text | wrong_values,
    "change_type": st.sampled_from(["create", "update", "delete", "rsvp"]) | near_misses("update") | wrong_values,
    "rsvp_infos": st.lists(rsvp_infos | user_entries, max_size=3) | wrong_values,
}
EVENT_FIELDS = ["schema", "header", "token", "app_id", "event_id", "event_type", "event", "user_id_list", "entries"]


uuid_delivery_ids = st.uuids().map(lambda u: u.hex)


def fresh_delivery_ids(prefix: str = "evt-fuzz-") -> st.SearchStrategy[str]:
    """Delivery ids never handed out before by this strategy. Drawn uuids repeat across the examples of a
    test (hypothesis varies the other draws around them), so a handler fed only those would answer most
    accepted events as duplicates; these come from a counter, the same in every derandomized run."""
    counter = itertools.count()
    return st.builds(lambda: f"{prefix}{next(counter)}")


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is _MISSING:
        target.pop(key, None)
    else:
        target[key] = value


@st.composite
def event_payloads(
    draw: st.DrawFn,
    token: str,
    app_id: str,
    open_ids: tuple[str, ...] = ("ou_1",),
    delivery_ids: st.SearchStrategy[str] = uuid_delivery_ids,
) -> dict[str, Any]:
    """A calendar change or an event change (gray fields present or not) with some known fields replaced
    by wrong values (sometimes none: then valid). The event type may be swapped for the other one, and a
    calendar change may carry a ``calendar_id`` too (it names no calendar then)."""
    delivery_id = draw(delivery_ids)
    if draw(st.booleans()):
        payload = calendar_changed(token, app_id, delivery_id=delivery_id, open_ids=open_ids)
        names = [*EVENT_FIELDS, "calendar_id"]
    else:
        payload = calendar_event_changed(token, app_id, delivery_id, open_ids, gray=draw(st.booleans()))
        names = [*EVENT_FIELDS, "calendar_id", *GRAY_FIELDS]
    header, event = payload["header"], payload["event"]
    for name in sorted(draw(st.sets(st.sampled_from(names), max_size=3))):
        if name in ("schema", "header", "event"):
            _put(payload, name, draw(wrong_values))
        elif name == "event_type":
            swapped = st.sampled_from([CALENDAR_CHANGED, EVENT_CHANGED])
            _put(header, name, draw(st.one_of(swapped, any_text, near_misses(header[name]), wrong_values)))
        elif name in ("token", "app_id", "event_id"):
            _put(header, name, draw(st.one_of(any_text, near_misses(header[name]), wrong_values)))
        elif name == "user_id_list":
            _put(event, name, draw(wrong_values | st.just([{"open_id": "ou_1"}] * 1001)))
        elif name == "entries":
            event["user_id_list"] = draw(st.lists(user_entries, max_size=4))
        elif name == "calendar_id":
            _put(event, name, draw(calendar_id_values))
        else:
            _put(event, name, draw(GRAY_FIELDS[name]))
    return payload


@st.composite
def event_changed_payloads(
    draw: st.DrawFn,
    token: str,
    app_id: str,
    open_ids: tuple[str, ...] = ("ou_1",),
    delivery_ids: st.SearchStrategy[str] = uuid_delivery_ids,
) -> dict[str, Any]:
    """An event change, authentic but for its ``calendar_id`` (anything from valid to missing, empty, a wrong
    type, huge, control characters, lone surrogates) and its gray fields (each right, wrong or left out)."""
    payload = calendar_event_changed(token, app_id, draw(delivery_ids), open_ids, gray=False)
    event = payload["event"]
    _put(event, "calendar_id", draw(calendar_id_values))
    for name, values in GRAY_FIELDS.items():
        _put(event, name, draw(values))
    return payload


@st.composite
def untouched_changes(
    draw: st.DrawFn,
    token: str,
    app_id: str,
    open_ids: tuple[str, ...] = ("ou_1",),
    delivery_ids: st.SearchStrategy[str] = uuid_delivery_ids,
) -> dict[str, Any]:
    """A calendar change or an event change (with the gray fields or without) as Feishu sends it."""
    delivery_id = draw(delivery_ids)
    kind = draw(st.sampled_from(["calendar", "event", "event-without-gray-fields"]))
    if kind == "calendar":
        return calendar_changed(token, app_id, delivery_id, open_ids)
    return calendar_event_changed(token, app_id, delivery_id, open_ids, gray=kind == "event")


@st.composite
def challenge_payloads(draw: st.DrawFn, token: str) -> dict[str, Any]:
    """A ``url_verification`` request with some of its fields gone wrong (sometimes none: then valid)."""
    payload: dict[str, Any] = {"challenge": str(draw(st.uuids())), "token": token, "type": "url_verification"}
    for name in sorted(draw(st.sets(st.sampled_from(["challenge", "token"]), max_size=2))):
        right = "c" * 1025 if name == "challenge" else token
        _put(payload, name, draw(st.one_of(any_text, near_misses(right), wrong_values)))
    return payload


@st.composite
def v1_payloads(draw: st.DrawFn, token: str) -> dict[str, Any]:
    """A schema 1.0 event with some of its fields gone wrong (sometimes none)."""
    payload: dict[str, Any] = {"uuid": str(draw(st.uuids())), "token": token, "type": "event_callback"}
    for name in sorted(draw(st.sets(st.sampled_from(["uuid", "token"]), max_size=2))):
        _put(payload, name, draw(st.one_of(any_text, near_misses(token), wrong_values)))
    return payload


def feishu_payloads(
    token: str, app_id: str, open_ids: tuple[str, ...] = ("ou_1",)
) -> st.SearchStrategy[dict[str, Any]]:
    """Any of the payload shapes Feishu sends (calendar change, event change, challenge, schema 1.0), with
    fields gone wrong."""
    return event_payloads(token, app_id, open_ids) | challenge_payloads(token) | v1_payloads(token)


# ------------------------------------------------------------------ valid crypto around anything


def sealed(encrypt_key: str, plaintext: bytes) -> bytes:
    """The body Feishu sends for ``plaintext``: ``{"encrypt": base64(iv || AES-256-CBC)}``."""
    return json.dumps({"encrypt": crypto.encrypt(crypto.derive_key(encrypt_key), plaintext)}).encode()


def signed_headers(encrypt_key: str, body: bytes, timestamp: str, nonce: str = "nonce") -> dict[str, str]:
    """Signature headers computed with the right key over ``body``."""
    return {
        "x-lark-request-timestamp": timestamp,
        "x-lark-request-nonce": nonce,
        "x-lark-signature": crypto.signature(timestamp, nonce, encrypt_key, body),
    }


def as_plaintext(value: Any) -> bytes:
    """A payload as the bytes to encrypt: JSON for documents, the bytes themselves otherwise."""
    return value if isinstance(value, bytes) else json.dumps(value).encode("utf-8", "surrogatepass")
