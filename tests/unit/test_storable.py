"""Feishu's values as DynamoDB holds them: exact numbers in and out, and the reduction of what it cannot hold."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
import requests
from boto3.dynamodb.types import TypeSerializer

from feishu_mirror import storable
from feishu_mirror.dynamodb.values import attribute_values, plain
from feishu_mirror.feishu import FeishuClient
from feishu_mirror.models import Calendar, Event
from feishu_mirror.storable import (
    EMPTY_KEY,
    FIELD_BUDGET_BYTES,
    INVALID_TEXT,
    KEY_TOO_LONG,
    NUMBER_OUT_OF_RANGE,
    TOO_DEEP,
    TOO_LARGE,
    canonical_number,
    fit,
    same_value,
    stored_form,
)


def nested(depth: int, leaf: Any = "x") -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


# ------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize(
    ("number", "stored"),
    [
        (7, 7),
        (2**64, 2**64),  # beyond 64 bits, within 38 digits: an int as it is
        (10**40, Decimal("1E+40")),  # 41 digits, one of them significant
        (Decimal("31.2304567"), Decimal("31.2304567")),
        (Decimal("1.50"), Decimal("1.5")),
        (Decimal("0E-200"), Decimal(0)),
        (Decimal("1E-130"), Decimal("1E-130")),
        (
            Decimal("9.9999999999999999999999999999999999999E+125"),
            Decimal("9.9999999999999999999999999999999999999E+125"),
        ),
    ],
)
def test_numbers_dynamodb_holds_keep_their_value(number: int | Decimal, stored: int | Decimal) -> None:
    assert canonical_number(number) == stored
    assert type(canonical_number(number)) is type(stored)
    TypeSerializer().serialize(canonical_number(number))  # boto3 sends it as it is


@pytest.mark.parametrize(
    "number",
    [
        2**127,  # 39 digits
        Decimal("1" * 39),
        Decimal("1.2345678901234567890123456789012345678E-130"),  # boto3's context refuses the last digits
        Decimal("1E+126"),
        Decimal("1E-131"),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
    ],
)
def test_numbers_dynamodb_cannot_hold_are_refused(number: int | Decimal) -> None:
    assert canonical_number(number) is None


def test_feishu_numbers_are_parsed_from_their_text_never_through_float() -> None:
    # GIVEN a listing page whose event carries coordinates, a long fraction and a huge integer as JSON numbers
    text = (
        '{"code":0,"msg":"ok","data":{"has_more":false,"page_token":"","sync_token":"S","items":[{"event_id":"e_0",'
        '"location":{"name":"HQ","latitude":31.230416,"longitude":121.4737010000000000001},'
        '"extra_number":1e400,"color":-1}]}}'
    )
    response = requests.Response()
    response.status_code = 200
    response._content = text.encode()

    class Session:
        def request(self, *_: Any, **__: Any) -> requests.Response:
            return response

    client = FeishuClient(
        base_url="http://feishu.test",
        accounts_url="http://accounts.test",
        app_id="cli",
        app_secret="secret",
        session=Session(),  # type: ignore[arg-type]
    )
    # WHEN the client reads it
    page = client.list_events("token", "cal", deadline=1e12)
    # THEN the fractions are Decimals of exactly the text Feishu sent, and integers stay ints
    event, gone = page.entries[0]
    assert not gone
    assert event.fields["location"] == {
        "name": "HQ",
        "latitude": Decimal("31.230416"),
        "longitude": Decimal("121.4737010000000000001"),
    }
    assert type(event.fields["color"]) is int


def test_a_dynamodb_item_reads_back_exactly_at_every_depth() -> None:
    # GIVEN Feishu values as they are written (ints, fractions, nested maps and lists)
    values = {
        "color": -11034625,
        "big": 2**100,
        "location": {"latitude": Decimal("31.230416"), "floor": 12, "tags": [1, Decimal("2.5"), {"n": 3}]},
        "reminders": [{"minutes": 5}],
        "flag": True,
    }
    # WHEN they round-trip through DynamoDB's attribute values
    item = plain(json.loads(json.dumps(attribute_values(values))))
    # THEN ints read back as ints and fractions as the same Decimals, nested ones too
    assert item == values
    assert type(item["location"]["floor"]) is int
    assert type(item["location"]["tags"][2]["n"]) is int
    assert type(item["reminders"][0]["minutes"]) is int
    assert item["location"]["latitude"] == Decimal("31.230416")


# ------------------------------------------------------------------------------ reduction
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"latitude": Decimal("NaN")}, NUMBER_OUT_OF_RANGE),
        ([1, 2**130], NUMBER_OUT_OF_RANGE),
        ({"name": "Caf\ud800"}, INVALID_TEXT),  # a lone surrogate: not encodable as UTF-8
        ({"\udfff": 1}, INVALID_TEXT),
        ({"": 1}, EMPTY_KEY),
        ({"k" * 65_536: 1}, KEY_TOO_LONG),
        (nested(32), TOO_DEEP),
        ([nested(31)], TOO_DEEP),
    ],
)
def test_a_field_dynamodb_cannot_hold_is_dropped_with_its_reason(value: Any, reason: str) -> None:
    kept, reduced, _ = fit({"location": value, "summary": "kept"})
    assert kept == {"summary": "kept"}
    assert reduced == {"location": reason}


def test_nesting_up_to_dynamodbs_limit_is_kept() -> None:
    kept, reduced, _ = fit({"location": nested(31), "reminders": [[[]]]})
    assert reduced == {}
    assert kept == {"location": nested(31), "reminders": [[[]]]}


def test_an_item_too_large_loses_its_largest_fields_until_it_fits() -> None:
    # GIVEN an event whose description and attachments together pass the budget, each alone within it
    fields = {
        "summary": "s" * 1000,
        "description": "d" * 250_000,
        "attachments": [{"name": "a" * 200_000}],
        "color": 5,
    }
    # WHEN it is fitted THEN only the largest field goes, and what is kept fits
    kept, reduced, size = fit(fields)
    assert reduced == {"description": TOO_LARGE}
    assert kept == {name: value for name, value in fields.items() if name != "description"}
    assert size <= FIELD_BUDGET_BYTES
    # AND fitting is deterministic: the same fields reduce the same way, whatever their order
    assert fit(dict(reversed(fields.items()))) == (kept, reduced, size)


def test_floats_handed_in_become_exact_decimals_of_their_text() -> None:
    kept, reduced, _ = fit({"location": {"latitude": 31.230416, "bad": float("inf")}, "summary": "x"})
    assert reduced == {"location": NUMBER_OUT_OF_RANGE}
    kept, _, _ = fit({"location": {"latitude": 31.230416}})
    assert kept["location"]["latitude"] == Decimal("31.230416")


@pytest.mark.parametrize(
    "values",
    [
        {"s": "中" * 1000, "n": [Decimal("1.5")] * 100},
        {"m": {f"k{i}": None for i in range(1000)}},
        {"l": [[]] * 1000, "b": True},
    ],
)
def test_the_size_estimate_follows_dynamodbs_rules(values: dict[str, Any]) -> None:
    # Strings count their UTF-8 bytes; numbers a byte per two digits plus one; maps and lists 3 bytes,
    # and 1 byte, plus the name, per member (what DynamoDB Local enforces at 400 KB, see the integration tier)
    expected = {
        "s": 1 + 3000,
        "n": 1 + 3 + 100 * (1 + 2),
        "m": 1 + 3 + sum(1 + len(f"k{i}") + 1 for i in range(1000)),
        "l": 1 + 3 + 1000 * (1 + 3),
        "b": 1 + 1,
    }
    assert stored_form(values)[1] == sum(expected[name] for name in values)


@pytest.mark.parametrize(
    ("text", "number"),
    [("-1" + "0" * 45, -(10**45)), ("0." + "0" * 129 + "1", Decimal("1E-130")), ("123.4500", Decimal("123.45"))],
)
def test_numbers_dynamodb_gives_back_with_all_their_digits_read_exactly(text: str, number: int | Decimal) -> None:
    # DynamoDB answers 1E+45 (stored from Feishu's 1e45) with 46 digits: boto3's own deserializer refuses that
    assert plain({"n": {"N": text}, "m": {"M": {"l": {"L": [{"N": text}]}}}}) == {"n": number, "m": {"l": [number]}}


def test_an_item_read_back_is_written_again_as_it_is() -> None:
    # A round number past 38 digits is stored as 8E+50 and reads back as an int of 51 digits: boto3 alone
    # refuses that int (it would have to round), so every write goes through the stored form.
    read_back = plain(attribute_values({"n": Decimal("8E+50")}))
    assert read_back == {"n": 8 * 10**50}
    with pytest.raises(Exception, match="Rounded"):
        attribute_values(read_back)
    assert attribute_values(stored_form(read_back)[0]) == {"n": {"N": "8E+50"}}
    with pytest.raises(ValueError, match="n cannot be stored: number_out_of_range"):
        stored_form({"n": Decimal("NaN")})


def test_json_equality_compares_numbers_by_value_and_never_a_bool_with_a_number() -> None:
    assert same_value({"a": [1, Decimal("2.50")]}, {"a": [Decimal("1.0"), Decimal("2.5")]})
    assert same_value(31.230416, Decimal("31.230416"))
    assert not same_value({"a": 1}, {"a": True})
    assert not same_value([0], [False])
    assert not same_value({"a": 1}, {"a": 1, "b": 2})
    assert not same_value("1", 1)
    assert not same_value([1, 2], [2, 1])


def test_parsed_items_carry_their_reduction() -> None:
    event, _ = Event.from_feishu({"event_id": "e_0", "summary": "x", "location": {"": "empty key"}})
    assert (dict(event.fields), dict(event.reduced)) == ({"summary": "x"}, {"location": EMPTY_KEY})
    calendar, _ = Calendar.from_feishu({"calendar_id": "c", "summary": "\ud800", "color": 2**130})
    assert dict(calendar.reduced) == {"color": NUMBER_OUT_OF_RANGE, "summary": INVALID_TEXT}
    assert dict(calendar.fields) == {}


@pytest.mark.parametrize("bad_id", ["", "x" * 513, "中" * 200, "e\ud800_0", None, 5])
def test_ids_dynamodb_cannot_key_an_item_by_are_refused(bad_id: Any) -> None:
    with pytest.raises(ValueError, match="event_id"):
        Event.from_feishu({"event_id": bad_id})
    with pytest.raises(ValueError, match="calendar_id"):
        Calendar.from_feishu({"calendar_id": bad_id})


def test_the_reduction_marker_names_a_documented_attribute() -> None:
    assert storable.REDUCED_ATTRIBUTE == "mirror_reduced"
