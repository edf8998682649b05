"""Hypothesis strategies and settings for fuzzing the callback (shared by the unit and integration tiers).

The strategies aim at what the callback parses: raw bodies, header maps as API Gateway passes them,
JSON documents of any shape and depth, and Feishu-shaped events whose known fields hold wrong types —
also wrapped in *valid* crypto (encrypted and signed with the right key), so the checks behind the
signature are fuzzed too. Settings are derandomized and keep no example database: CI reruns are exact.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from feishu_mirror import crypto
from feishu_mirror.callback import CALENDAR_CHANGED, MAX_BODY_BYTES

_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
UNIT = settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=_SLOW_DATA)
INTEGRATION = settings(
    max_examples=60,
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
    token: str, app_id: str, event_id: str = "evt-fuzz", open_ids: tuple[str, ...] = ("ou_1",)
) -> dict[str, Any]:
    """A well-formed schema 2.0 ``calendar.calendar.changed_v4`` payload."""
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "event_type": CALENDAR_CHANGED,
            "create_time": "1700000000000",
            "token": token,
            "app_id": app_id,
            "tenant_key": "tenant",
        },
        "event": {"user_id_list": [{"open_id": o, "union_id": "on_x", "user_id": "u"} for o in open_ids]},
    }


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


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is _MISSING:
        target.pop(key, None)
    else:
        target[key] = value


@st.composite
def event_payloads(draw: st.DrawFn, token: str, app_id: str, open_ids: tuple[str, ...] = ("ou_1",)) -> dict[str, Any]:
    """A calendar change with some known fields replaced by wrong values (sometimes none: then valid)."""
    payload = calendar_changed(token, app_id, event_id=draw(st.uuids()).hex, open_ids=open_ids)
    header, event = payload["header"], payload["event"]
    fields = draw(
        st.sets(
            st.sampled_from(
                ["schema", "header", "token", "app_id", "event_id", "event_type", "event", "user_id_list", "entries"]
            ),
            max_size=3,
        )
    )
    for name in sorted(fields):
        if name in ("schema", "header", "event"):
            _put(payload, name, draw(wrong_values))
        elif name in ("token", "app_id", "event_id", "event_type"):
            _put(header, name, draw(st.one_of(any_text, near_misses(header[name]), wrong_values)))
        elif name == "user_id_list":
            _put(event, name, draw(wrong_values | st.just([{"open_id": "ou_1"}] * 1001)))
        else:
            event["user_id_list"] = draw(st.lists(user_entries, max_size=4))
    return payload


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
    """Any of the three payload shapes Feishu sends, with fields gone wrong."""
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
