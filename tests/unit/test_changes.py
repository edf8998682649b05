"""The change stream's domain mapping: which mirror-table writes become which domain events."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from feishu_mirror.changes import (
    MAX_REQUEST_BYTES,
    SEND_RESERVE_MS,
    SOURCE,
    ChangeEvent,
    MalformedRecord,
    attribute_value,
    change_event,
    entry_size,
    is_ttl_removal,
    publish,
)
from feishu_mirror.models import CALENDAR_FIELDS, EVENT_FIELDS
from tests.stream_records import StubEvents, calendar, event, record, renames

FIELDS: dict[str, Any] = {"summary": "Team", "description": "daily", "color": -1, "type": "shared", "role": "owner"}


def mapped(rec: Mapping[str, Any]) -> ChangeEvent:
    change = change_event(rec)
    assert change is not None
    return change


# ------------------------------------------------------------------------------------ calendars


def test_a_new_calendar_is_created_with_its_feishu_fields_only() -> None:
    # GIVEN a new calendar item that also holds an attribute that is no Feishu field
    item = calendar(mirrored_at=1_700_000_000_123, **FIELDS, internal_note="not for consumers")
    # WHEN its INSERT record is mapped
    change = mapped(record("INSERT", new=item, sequence="4200"))
    # THEN it is a CalendarCreated with the ids, the Feishu fields after, when it was mirrored, and the
    # stream record it comes from
    assert change.detail_type == "CalendarCreated"
    assert change.detail == {
        "schema_version": "1",
        "open_id": "ou_a",
        "calendar_id": "cal_1",
        "before": None,
        "after": FIELDS,
        "changed": sorted(FIELDS),
        "mirrored_at": 1_700_000_000_123,
        "change_id": "id-4200",
        "sequence": "4200",
    }


def test_a_changed_field_is_an_update_with_before_after_and_what_changed() -> None:
    old = calendar(mirrored_at=1_000, **FIELDS)
    new = calendar(mirrored_at=2_000, **{**FIELDS, "summary": "Team (daily)", "color": 5})
    change = mapped(record("MODIFY", old=old, new=new))
    assert change.detail_type == "CalendarUpdated"
    assert change.detail["before"] == FIELDS
    assert change.detail["after"] == {**FIELDS, "summary": "Team (daily)", "color": 5}
    assert change.detail["changed"] == ["color", "summary"]
    assert change.detail["mirrored_at"] == 2_000


def test_a_field_that_disappears_or_appears_counts_as_changed() -> None:
    old = calendar(**FIELDS)
    new = calendar(**{k: v for k, v in FIELDS.items() if k != "description"}, summary_alias="T")
    change = mapped(record("MODIFY", old=old, new=new))
    assert change.detail_type == "CalendarUpdated"
    assert change.detail["changed"] == ["description", "summary_alias"]
    assert "description" not in change.detail["after"]


def test_a_write_that_changes_no_feishu_field_publishes_nothing() -> None:
    # GIVEN a rewrite with only mirrored_at (and a non-Feishu attribute) changed
    old = calendar(mirrored_at=1_000, **FIELDS)
    new = calendar(mirrored_at=9_000, **FIELDS, internal_note="x")
    # THEN there is no change event
    assert change_event(record("MODIFY", old=old, new=new)) is None


def test_a_tombstone_write_is_a_deletion_with_the_fields_before() -> None:
    old = calendar(mirrored_at=1_000, **FIELDS)
    tombstone = calendar(mirrored_at=5_000, deleted=True, **FIELDS)
    change = mapped(record("MODIFY", old=old, new=tombstone))
    assert change.detail_type == "CalendarDeleted"
    assert (change.detail["before"], change.detail["after"]) == (FIELDS, None)
    assert change.detail["changed"] == sorted(FIELDS)
    assert change.detail["mirrored_at"] == 5_000


def test_a_live_item_replacing_a_tombstone_is_a_creation() -> None:
    tombstone = calendar(mirrored_at=1_000, deleted=True, summary="Gone")
    revived = calendar(mirrored_at=2_000, summary="Back")
    change = mapped(record("MODIFY", old=tombstone, new=revived))
    assert change.detail_type == "CalendarCreated"
    assert (change.detail["before"], change.detail["after"]) == (None, {"summary": "Back"})


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("INSERT", None, calendar(deleted=True, summary="never seen live")),
        ("MODIFY", calendar(deleted=True, summary="a"), calendar(mirrored_at=7, deleted=True, summary="b")),
        ("REMOVE", calendar(deleted=True, summary="a"), None),
    ],
    ids=["tombstone inserted", "tombstone rewritten", "tombstone removed by hand"],
)
def test_tombstone_only_records_publish_nothing(
    name: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    assert change_event(record(name, old=old, new=new)) is None


def test_the_ttl_removal_of_a_tombstone_publishes_nothing() -> None:
    # GIVEN the REMOVE record DynamoDB's TTL makes when a tombstone expires
    rec = record("REMOVE", old=calendar(deleted=True, **FIELDS), ttl=True)
    # THEN it is recognised as such and maps to nothing
    assert is_ttl_removal(rec)
    assert change_event(rec) is None


def test_removing_a_live_item_is_a_deletion_stamped_after_its_last_change() -> None:
    # GIVEN a live item removed outright (the mirror never does this, but someone could)
    old = calendar(mirrored_at=1_800_000_000_500, **FIELDS)
    rec = record("REMOVE", old=old, created=1_800_000_000)  # the record's time is in whole seconds
    # WHEN it is mapped
    change = mapped(rec)
    # THEN it is a deletion, and its mirrored_at is later than the removed item's, so (key, mirrored_at)
    # never repeats the last change's
    assert not is_ttl_removal(rec)
    assert change.detail_type == "CalendarDeleted"
    assert (change.detail["before"], change.detail["after"]) == (FIELDS, None)
    assert change.detail["mirrored_at"] == 1_800_000_000_501
    later = mapped(record("REMOVE", old=old, created=1_800_000_060))
    assert later.detail["mirrored_at"] == 1_800_000_060_000


# --------------------------------------------------------------------------------------- events

START = {"timestamp": "1767225600", "timezone": "Asia/Shanghai"}
EVENT_FIELDS_VALUES: dict[str, Any] = {
    "summary": "Planning",
    "start_time": START,
    "end_time": {"timestamp": "1767229200", "timezone": "Asia/Shanghai"},
    "reminders": [{"minutes": 5}],
    "location": {"name": "3F", "latitude": 31.25, "longitude": 121.5},
    "color": 0,
    "is_exception": False,
    "vchat": {"vc_type": "vc"},
}


def test_a_new_event_is_created_with_ids_and_nested_fields_as_plain_json() -> None:
    item = event("ou_b", "cal_9", "evt_7", mirrored_at=42, **EVENT_FIELDS_VALUES)
    change = mapped(record("INSERT", new=item))
    assert change.detail_type == "CalendarEventCreated"
    assert (change.detail["open_id"], change.detail["calendar_id"], change.detail["event_id"]) == (
        "ou_b",
        "cal_9",
        "evt_7",
    )
    assert change.detail["after"] == EVENT_FIELDS_VALUES
    assert "calendar_key" not in change.detail["after"]
    # numbers inside maps and lists are JSON numbers again (ints stay ints, fractions are floats)
    detail = json.loads(change.entry("bus")["Detail"])
    assert detail["after"]["reminders"] == [{"minutes": 5}]
    assert detail["after"]["location"]["latitude"] == 31.25
    assert isinstance(detail["after"]["reminders"][0]["minutes"], int)


def test_a_change_deep_inside_a_nested_field_is_an_update_of_that_field() -> None:
    old = event(mirrored_at=1, **EVENT_FIELDS_VALUES)
    new = event(mirrored_at=2, **{**EVENT_FIELDS_VALUES, "reminders": [{"minutes": 5}, {"minutes": 15}]})
    change = mapped(record("MODIFY", old=old, new=new))
    assert change.detail_type == "CalendarEventUpdated"
    assert change.detail["changed"] == ["reminders"]
    assert change.detail["after"]["reminders"] == [{"minutes": 5}, {"minutes": 15}]
    # AND the same nested values rewritten are no change at all
    again = event(mirrored_at=3, **{**EVENT_FIELDS_VALUES, "reminders": [{"minutes": 5}, {"minutes": 15}]})
    assert change_event(record("MODIFY", old=new, new=again)) is None


def test_event_tombstones_and_revivals() -> None:
    live = event(mirrored_at=1, **EVENT_FIELDS_VALUES)
    gone = event(mirrored_at=2, deleted=True, **EVENT_FIELDS_VALUES)
    deleted = mapped(record("MODIFY", old=live, new=gone))
    assert (deleted.detail_type, deleted.detail["event_id"], deleted.detail["after"]) == (
        "CalendarEventDeleted",
        "evt_1",
        None,
    )
    revived = mapped(record("MODIFY", old=gone, new=event(mirrored_at=3, summary="again")))
    assert revived.detail_type == "CalendarEventCreated"
    assert change_event(record("REMOVE", old=gone, ttl=True)) is None


def test_event_ids_come_from_the_partition_key_when_the_plain_attributes_are_missing() -> None:
    item = event("ou_c", "feishu.cn_abc@group.calendar.feishu.cn", "evt_2", summary="x")
    del item["open_id"], item["calendar_id"]
    change = mapped(record("INSERT", new=item))
    assert (change.detail["open_id"], change.detail["calendar_id"]) == (
        "ou_c",
        "feishu.cn_abc@group.calendar.feishu.cn",
    )


def test_the_mapped_fields_are_exactly_the_models_feishu_fields() -> None:
    event_item: dict[str, Any] = {name: f"v-{name}" for name in EVENT_FIELDS} | {"sync_token": "x", "page_token": "y"}
    after = mapped(record("INSERT", new=event(**event_item))).detail["after"]
    assert set(after) == set(EVENT_FIELDS)
    calendar_item: dict[str, Any] = {name: f"v-{name}" for name in CALENDAR_FIELDS} | {"access_token": "t-secret"}
    change = mapped(record("INSERT", new=calendar(**calendar_item)))
    assert set(change.detail["after"]) == set(CALENDAR_FIELDS)
    assert "t-secret" not in change.entry("bus")["Detail"]


def test_an_item_stored_reduced_carries_its_marker_in_before_and_after() -> None:
    # GIVEN an event whose description DynamoDB could not hold, and its next version that fits again
    reduced = event(mirrored_at=1, summary="Offsite", mirror_reduced={"description": "too_large"})
    fits = event(mirrored_at=2, summary="Offsite", description="short")
    # WHEN both writes are mapped
    created = mapped(record("INSERT", new=reduced))
    updated = mapped(record("MODIFY", old=reduced, new=fits))
    # THEN consumers see which fields the mirror left out, and why; `changed` names Feishu fields only
    assert created.detail["after"] == {"summary": "Offsite", "mirror_reduced": {"description": "too_large"}}
    assert created.detail["changed"] == ["summary"]
    assert updated.detail["before"]["mirror_reduced"] == {"description": "too_large"}
    assert "mirror_reduced" not in updated.detail["after"]
    assert updated.detail["changed"] == ["description"]


# ---------------------------------------------------------------------------------- bad records


@pytest.mark.parametrize(
    ("rec", "reason"),
    [
        ({**record("INSERT", new=calendar()), "eventName": "UPSERT"}, "unknown eventName"),
        ({**record("INSERT", new=calendar()), "dynamodb": None}, "not a DynamoDB stream record"),
        (
            {**record("MODIFY", old=calendar(), new=calendar()), "dynamodb": {"Keys": {"open_id": {"S": "o"}}}},
            "without the images",
        ),
        (
            record("INSERT", new={"open_id": "ou", "calendar_id": "c"})
            | {"dynamodb": {"Keys": {"pk": {"S": "x"}}, "NewImage": {"pk": {"S": "x"}}}},
            "neither a calendars nor an events table record",
        ),
        (
            record("INSERT", new={"open_id": "ou", "calendar_id": "c"})
            | {"dynamodb": {"Keys": {"open_id": {"S": "ou"}, "calendar_id": {"S": "c"}}, "NewImage": {"x": {"Q": 1}}}},
            "unknown attribute value type",
        ),
    ],
    ids=["event name", "no body", "keys only", "other table", "bad attribute value"],
)
def test_records_the_mapping_cannot_read_are_refused_loudly(rec: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedRecord, match=reason):
        change_event(rec)


def test_every_attribute_value_type_becomes_plain_json() -> None:
    assert attribute_value({"N": "12"}) == 12
    assert attribute_value({"N": "-1.5"}) == -1.5
    assert attribute_value({"N": "1E+2"}) == 100
    assert attribute_value({"NULL": True}) is None
    assert attribute_value({"BOOL": False}) is False
    assert attribute_value({"SS": ["b", "a"]}) == ["a", "b"]
    assert attribute_value({"NS": ["2", "1.5"]}) == [1.5, 2]
    assert attribute_value({"B": "AAE="}) == "AAE="
    assert attribute_value({"B": b"\x00\x01"}) == "AAE="
    assert attribute_value({"BS": [b"\x01", "AA=="]}) == ["AA==", "AQ=="]
    assert attribute_value({"M": {"l": {"L": [{"S": "x"}, {"N": "3"}]}}}) == {"l": ["x", 3]}


# ------------------------------------------------------------------------------------ entries


def test_an_entry_names_the_bus_source_and_detail_type_and_keeps_unicode_compact() -> None:
    change = mapped(record("INSERT", new=calendar(summary="团队日历")))
    entry = change.entry("fcm-ChangeBus")
    assert (entry["Source"], entry["DetailType"], entry["EventBusName"]) == (SOURCE, "CalendarCreated", "fcm-ChangeBus")
    assert "团队日历" in entry["Detail"]
    assert json.loads(entry["Detail"]) == change.detail
    assert entry_size(entry) == len(SOURCE) + len("CalendarCreated") + len(entry["Detail"].encode())


def test_a_detail_too_large_for_eventbridge_is_sent_without_the_fields() -> None:
    huge = "长" * (MAX_REQUEST_BYTES // 3)  # 3 bytes each in UTF-8: over the limit with before and after
    change = mapped(record("MODIFY", old=calendar(description="short"), new=calendar(description=huge)))
    entry = change.entry("bus")
    detail = json.loads(entry["Detail"])
    assert entry_size(entry) <= MAX_REQUEST_BYTES
    assert (detail["before"], detail["after"], detail["truncated"]) == (None, None, True)
    assert (detail["changed"], detail["open_id"], detail["calendar_id"]) == (["description"], "ou_a", "cal_1")


# ---------------------------------------------------------------------------------- publishing


def test_entries_go_out_in_stream_order_ten_per_request() -> None:
    stub = StubEvents()
    publication = publish(renames(23), stub, "bus")
    assert stub.summaries() == [[f"s{n}" for n in range(s, min(s + 10, 23))] for s in (0, 10, 20)]
    assert (publication.published, publication.skipped, publication.failed_at) == (23, 0, None)
    assert all(e["EventBusName"] == "bus" for call in stub.calls for e in call)


def test_records_without_a_change_are_skipped_not_sent() -> None:
    stub = StubEvents()
    noop = record("MODIFY", old=calendar(summary="a"), new=calendar(mirrored_at=5, summary="a"))
    publication = publish([noop, *renames(2), noop], stub, "bus")
    assert stub.summaries() == [["s0", "s1"]]
    assert (publication.published, publication.skipped, publication.failed_at) == (2, 2, None)


def test_a_failed_entry_stops_the_batch_there() -> None:
    # GIVEN EventBridge refusing the 4th entry of the second request
    stub = StubEvents([set(), {3}])
    records = renames(25)
    # WHEN the batch is published
    publication = publish(records, stub, "bus")
    # THEN nothing after that request was sent and the retry starts at the refused record (index 13)
    assert len(stub.calls) == 2
    assert (publication.published, publication.failed_at) == (13, 13)
    assert publication.error.startswith("InternalFailure")


def test_a_failed_request_stops_the_batch_at_its_first_record() -> None:
    stub = StubEvents([set(), ConnectionError("endpoint unreachable")])
    publication = publish(renames(15), stub, "bus")
    assert (publication.published, publication.failed_at) == (10, 10)
    assert publication.error == "ConnectionError: endpoint unreachable"


def test_skipped_records_after_the_failure_are_retried_too() -> None:
    stub = StubEvents([{1}])
    noop = record("MODIFY", old=calendar(summary="a"), new=calendar(mirrored_at=5, summary="a"))
    publication = publish([noop, *renames(2), noop], stub, "bus")
    assert (publication.published, publication.skipped, publication.failed_at) == (1, 1, 2)


def test_a_malformed_record_is_a_failure_after_the_records_before_it_are_sent() -> None:
    stub = StubEvents()
    bad = {**renames(1)[0], "eventName": "UPSERT"}
    publication = publish([*renames(3), bad, *renames(2)], stub, "bus")
    assert stub.summaries() == [["s0", "s1", "s2"]]
    assert (publication.published, publication.failed_at) == (3, 3)
    assert publication.error.startswith("MalformedRecord")


def test_requests_stay_under_the_size_limit() -> None:
    stub = StubEvents()
    big = "x" * (MAX_REQUEST_BYTES // 2)  # two such entries exceed a request, one does not
    records = [
        record(
            "MODIFY",
            old=calendar(calendar_id=f"c{n}", summary="old"),
            new=calendar(calendar_id=f"c{n}", summary=f"s{n}", description=big),
        )
        for n in range(3)
    ]
    publication = publish(records, stub, "bus")
    assert [len(call) for call in stub.calls] == [1, 1, 1]
    assert all(sum(entry_size(e) for e in call) <= MAX_REQUEST_BYTES for call in stub.calls)
    assert publication.published == 3


def test_no_request_starts_when_the_invocation_is_about_to_time_out() -> None:
    # GIVEN an invocation whose remaining time drops below the reserve after the first request
    stub = StubEvents()
    left = iter([SEND_RESERVE_MS + 1, SEND_RESERVE_MS - 1])
    # WHEN 15 changes are published
    publication = publish(renames(15), stub, "bus", time_left_ms=lambda: next(left))
    # THEN the second request is left for the retry instead of risking a timeout mid-request
    assert len(stub.calls) == 1
    assert (publication.published, publication.failed_at) == (10, 10)
    assert publication.error.startswith("TimeoutApproaching")


def test_two_changes_of_one_item_never_share_a_request() -> None:
    # GIVEN a calendar renamed twice in a row, then another calendar created, and EventBridge refusing
    # the first rename
    first = record("MODIFY", old=calendar(summary="a"), new=calendar(mirrored_at=2, summary="b"))
    second = record("MODIFY", old=calendar(mirrored_at=2, summary="b"), new=calendar(mirrored_at=3, summary="c"))
    other = record("INSERT", new=calendar(calendar_id="cal_2", summary="x"))
    stub = StubEvents([{0}])
    # WHEN the batch is published
    publication = publish([first, second, other], stub, "bus")
    # THEN the second rename was held back for a request of its own, which never went out: the item's
    # later change is not published before its earlier one
    assert stub.summaries() == [["b"]]
    assert (publication.published, publication.failed_at) == (0, 0)
    # AND without failures the item's changes go out one request after the other, in order
    stub = StubEvents()
    publish([first, second, other], stub, "bus")
    assert stub.summaries() == [["b"], ["c", "x"]]
