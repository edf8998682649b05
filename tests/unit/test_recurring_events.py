"""Recurring events as Feishu models them: masters, exceptions, cancelled occurrences (pure planning and the
listing engine on an in-memory collection)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from feishu_mirror.listing import ListingEngine, MetricNames, Tally, plan_page
from feishu_mirror.models import Checkpoint, Event, HeldSweep, ListingOutcome, ListingState, Page, Stored

MASTER = "4f1c2a_0"
WEEKLY = "FREQ=WEEKLY;COUNT=5"


def master(**fields: Any) -> Event:
    return Event.from_feishu({"event_id": MASTER, "summary": "Weekly", "recurrence": WEEKLY, **fields})[0]


def exception(start: int, status: str = "confirmed", **fields: Any) -> dict[str, Any]:
    """An exception entry as Feishu lists it: ``<uid>_<original start>``."""
    return {
        "event_id": f"4f1c2a_{start}",
        "summary": "Weekly (moved)",
        "is_exception": True,
        "recurring_event_id": MASTER,
        "status": status,
        **fields,
    }


def parsed(raw: dict[str, Any]) -> tuple[Event, bool]:
    return Event.from_feishu(raw)


# ------------------------------------------------------------------------------ parsing
def test_a_cancelled_occurrence_is_a_live_item_and_a_cancelled_event_is_a_deletion() -> None:
    cancelled_occurrence, gone = parsed(exception(1767830400, "cancelled"))
    assert gone is False
    assert cancelled_occurrence.fields["status"] == "cancelled"
    assert cancelled_occurrence.master_id == MASTER
    # a cancelled event that is no exception is gone, and so is a cancelled master
    assert parsed({"event_id": "other_0", "status": "cancelled"})[1] is True
    assert parsed({"event_id": MASTER, "recurrence": WEEKLY, "status": "cancelled"})[1] is True
    # an exception only when Feishu says so and names another event as its master
    assert parsed({**exception(1, "cancelled"), "is_exception": False})[1] is True
    assert parsed({**exception(1, "cancelled"), "recurring_event_id": ""})[1] is True
    assert parsed({**exception(1, "cancelled"), "recurring_event_id": "4f1c2a_1"})[1] is True
    assert parsed({**exception(1, "cancelled"), "is_deleted": True})[1] is True


# ------------------------------------------------------------------------------ planning
def test_deleting_a_master_tombstones_its_live_exceptions_wherever_they_are() -> None:
    moved, _ = parsed(exception(100))
    cancelled, _ = parsed(exception(200, "cancelled"))
    stranger, _ = parsed({"event_id": "4f1c2a_300", "summary": "same uid, no exception"})
    current = {e.key: Stored(e) for e in (master(), moved, cancelled, stranger)}
    plan = plan_page([parsed({"event_id": MASTER, "status": "cancelled"})], current)
    assert sorted(e.key for e in plan.deletions) == sorted([MASTER, moved.key, cancelled.key])
    assert plan.live_delta == -3
    assert plan.upserts == ()


def test_an_exception_of_a_master_the_mirror_holds_as_a_tombstone_is_a_deletion_in_an_increment() -> None:
    moved, _ = parsed(exception(100))
    current = {MASTER: Stored(master(), deleted_at=1), moved.key: Stored(moved)}
    entries = [parsed(exception(100, "cancelled")), parsed(exception(200, "cancelled"))]
    plan = plan_page(entries, current)
    assert [e.key for e in plan.deletions] == [moved.key]
    assert plan.upserts == ()
    # an exception whose master the mirror has never seen is kept: the master may come on a later page
    assert [e.key for e in plan_page(entries, {}).upserts] == [moved.key, "4f1c2a_200"]


def test_a_full_listing_keeps_exceptions_listed_before_their_master_even_over_an_old_tombstone() -> None:
    current = {MASTER: Stored(master(), deleted_at=1)}  # e.g. the calendar was unreadable for a while
    plan = plan_page([parsed(exception(200, "cancelled")), (master(), False)], current, full_listing=True)
    assert [e.key for e in plan.upserts] == ["4f1c2a_200", MASTER]
    assert plan.listed_ids == {"4f1c2a_200", MASTER}


def test_an_exception_deleted_with_its_master_on_the_same_page_is_written_once() -> None:
    moved, _ = parsed(exception(100))
    current = {MASTER: Stored(master()), moved.key: Stored(moved)}
    # Feishu's order either way: the master's deletion first, or its exceptions' changes first
    for entries in (
        [parsed({"event_id": MASTER, "status": "cancelled"}), parsed(exception(100, "cancelled"))],
        [parsed(exception(100, "cancelled")), parsed({"event_id": MASTER, "status": "cancelled"})],
    ):
        plan = plan_page(entries, current)
        assert sorted(e.key for e in plan.deletions) == sorted([MASTER, moved.key])
        assert plan.live_delta == -2


# ------------------------------------------------------------------------------ the engine
METRICS = MetricNames(*(f"M{n}" for n in range(10)))


class Events:
    """A calendar's events in memory, listed from scripted pages."""

    name = "events"
    metrics = METRICS

    def __init__(self, stored: dict[str, Stored[Event]], pages: list[Page[Event]]) -> None:
        self.stored = stored
        self.pages = pages
        self.written: list[tuple[str, bool]] = []
        self.children_asked: list[list[str]] = []
        self.committed: ListingOutcome | None = None

    def fetch(self, *, page_token: str, sync_token: str | None) -> Page[Event]:
        return self.pages.pop(0)

    def load_all(self) -> dict[str, Stored[Event]]:
        return dict(self.stored)

    def load_some(self, keys: Iterable[str]) -> dict[str, Stored[Event]]:
        return {k: self.stored[k] for k in keys if k in self.stored}

    def load_children(self, parent_keys: Iterable[str]) -> dict[str, Stored[Event]]:
        parents = list(parent_keys)
        self.children_asked.append(parents)
        return {k: s for k, s in self.stored.items() if s.item.master_id in parents}

    def apply(self, now: int, upserts: tuple[Event, ...], deletions: tuple[Event, ...]) -> None:
        for event in upserts:
            self.stored[event.key] = Stored(event)
            self.written.append((event.key, False))
        for event in deletions:
            self.stored[event.key] = Stored(event, deleted_at=now)
            self.written.append((event.key, True))

    def save_checkpoint(self, now: int, checkpoint: Checkpoint) -> None:
        pass

    def discard_sync_state(self, now: int) -> None:
        pass

    def commit(self, now: int, outcome: ListingOutcome) -> None:
        self.committed = outcome

    def live(self) -> dict[str, str]:
        return {k: str(s.item.fields.get("status", "")) for k, s in self.stored.items() if s.live}


def page(*entries: tuple[Event, bool], has_more: bool = False) -> Page[Event]:
    return Page(tuple(entries), has_more, "next" if has_more else "", "" if has_more else "S2")


def sync(events: Events, state: ListingState) -> Any:
    return ListingEngine(mass_delete_confirm_seconds=3600, clock=lambda: 10_000).sync_collection(events, state, Tally())


def test_an_increment_that_deletes_a_master_tombstones_exceptions_it_does_not_list() -> None:
    # GIVEN a mirrored master with a moved and a cancelled occurrence, and another single event
    moved, cancelled = parsed(exception(100))[0], parsed(exception(200, "cancelled"))[0]
    single = parsed({"event_id": "single_0", "summary": "one-off"})[0]
    events = Events({e.key: Stored(e) for e in (master(), moved, cancelled, single)}, [])
    # WHEN an increment lists only the master, cancelled (and an update of the single event)
    events.pages = [page(parsed({"event_id": MASTER, "status": "cancelled"}), (single, False))]
    outcome = sync(events, ListingState(sync_token="S1", mirrored=4))
    # THEN the master and both exceptions are tombstones, in one write, and only the master's children were looked up
    assert events.live() == {"single_0": ""}
    assert sorted(events.written) == sorted([(MASTER, True), (moved.key, True), (cancelled.key, True)])
    assert events.children_asked == [[MASTER]]
    assert outcome.mirrored == 1


def test_deleting_a_single_event_looks_up_no_exceptions() -> None:
    single = parsed({"event_id": "single_0", "summary": "one-off"})[0]
    events = Events({"single_0": Stored(single)}, [page(parsed({"event_id": "single_0", "status": "cancelled"}))])
    sync(events, ListingState(sync_token="S1", mirrored=1))
    assert events.children_asked == []
    assert events.live() == {}


def test_a_full_listing_lists_exceptions_before_their_master_and_keeps_them() -> None:
    # GIVEN a calendar listed in full, its cancelled occurrence on the first page and its master on the second
    events = Events(
        {},
        [
            page(parsed(exception(200, "cancelled")), has_more=True),
            page((master(), False)),
        ],
    )
    outcome = sync(events, ListingState())
    # THEN the cancelled occurrence is live with its status, and the master too
    assert events.live() == {MASTER: "", "4f1c2a_200": "cancelled"}
    assert outcome.mirrored == 2


def test_a_full_listing_tombstones_exceptions_whose_master_it_did_not_list() -> None:
    # GIVEN a mirror with a master and its exceptions, and a full listing that lists the exceptions but not
    # the master (it is gone), among enough other events that this is no mass deletion
    others = [parsed({"event_id": f"o{n}_0", "summary": str(n)})[0] for n in range(6)]
    moved, cancelled = parsed(exception(100))[0], parsed(exception(200, "cancelled"))[0]
    events = Events(
        {e.key: Stored(e) for e in (master(), moved, cancelled, *others)},
        [page(*((e, False) for e in (moved, cancelled, *others)))],
    )
    outcome = sync(events, ListingState(mirrored=9))
    # THEN the master is swept and its exceptions with it
    assert set(events.live()) == {e.key for e in others}
    assert outcome.mirrored == 6


def test_a_held_mass_deletion_keeps_the_masters_and_so_their_exceptions() -> None:
    # GIVEN a mirror of a master with exceptions and other events, and a full listing that lists only one exception
    others = [parsed({"event_id": f"o{n}_0", "summary": str(n)})[0] for n in range(6)]
    moved = parsed(exception(100))[0]
    orphan = parsed({**exception(300), "recurring_event_id": "gone_0", "event_id": "gone_300"})[0]
    events = Events({e.key: Stored(e) for e in (master(), moved, orphan, *others)}, [page((moved, False))])
    # WHEN the listing ends
    outcome = sync(events, ListingState(mirrored=9))
    # THEN the deletions are held: the master and its exception stay live; only an exception whose master
    # the mirror does not hold at all is retired
    assert outcome.held == HeldSweep(7, 10_000)
    assert set(events.live()) == {MASTER, moved.key, *(e.key for e in others)}
    assert events.written == [("gone_300", True)]


@pytest.mark.parametrize("reduced_before", [0, 3])
def test_reduced_items_are_counted_for_health(reduced_before: int) -> None:
    big, _ = parsed({"event_id": "big_0", "description": "d" * 400_000})
    small, _ = parsed({"event_id": "small_0", "summary": "s"})
    assert dict(big.reduced) == {"description": "too_large"}
    events = Events({}, [page((big, False), (small, False))])
    assert sync(events, ListingState(reduced=reduced_before)).reduced == 1  # a full listing counts afresh
    # an increment that lists the reduced event again, unchanged, writes nothing and counts it still
    events.pages = [page((parsed({"event_id": "big_0", "description": "d" * 400_000})[0], False))]
    events.written.clear()
    assert sync(events, ListingState(sync_token="S1", reduced=1)).reduced == 1
    assert events.written == []
    # and one that lets it fit again takes it off the count
    events.pages = [page((parsed({"event_id": "big_0", "description": "short"})[0], False))]
    assert sync(events, ListingState(sync_token="S1", reduced=1)).reduced == 0
    assert events.committed is not None
    assert events.committed.reduced == 0


@pytest.mark.parametrize("master_first", [True, False], ids=["master-first", "exceptions-first"])
def test_an_increment_with_a_series_made_and_deleted_since_the_last_sync_leaves_no_occurrence_behind(
    master_first: bool,
) -> None:
    # GIVEN a mirror that never saw a recurring event, and an increment (two pages) in which Feishu reports
    # its master deleted (a bare entry) and its occurrence cancelled, in either order
    deleted_master = parsed({"event_id": MASTER, "status": "cancelled"})
    cancelled = parsed(exception(200, "cancelled"))
    first, second = (deleted_master, cancelled) if master_first else (cancelled, deleted_master)
    events = Events({}, [page(first, has_more=True), page(second)])
    # WHEN the increment is applied
    outcome = sync(events, ListingState(sync_token="S1"))
    # THEN no occurrence outlives the series
    assert events.live() == {}
    assert outcome.mirrored == 0


def test_an_increment_keeps_an_occurrence_whose_new_master_comes_on_a_later_page() -> None:
    cancelled = parsed(exception(200, "cancelled"))
    events = Events({}, [page(cancelled, has_more=True), page((master(), False))])
    outcome = sync(events, ListingState(sync_token="S1"))
    assert events.live() == {"4f1c2a_200": "cancelled", MASTER: ""}
    assert outcome.mirrored == 2
