"""The in-memory fakes (``tests/fakes.py``) answer like the DynamoDB adapters: the same scenario of
conditional writes and reads, run against both on DynamoDB Local and in memory, gives the same answers
— so unit tests and simulations on the fakes hold for the real tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from feishu_mirror.models import (
    Calendar,
    Checkpoint,
    CollectionId,
    Event,
    Fence,
    HeldSweep,
    ListingOutcome,
    SealedGrant,
    UserIdentity,
)
from tests.fakes import FakeListings, FakeMirror, FakeUsers
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration

T0 = 1_800_000_000
USER = "ou_contract"
GRANT = SealedGrant(b"sealed-access", T0 + 7200, b"sealed-refresh", T0 + 86400, "calendar")


@dataclass
class Backend:
    """The ports under test, on one side: every users-table port, the listing state, the mirror tables."""

    users: Any  # pings/resync/sync/onboarding/status ports of the users table
    tokens: Any
    health: Any
    listings: Any
    calendars: Any
    events: Any


def dynamodb(harness: Harness) -> Backend:
    tables = harness.tables
    return Backend(tables.schedule, tables.tokens, tables.health, tables.listings, tables.calendars, tables.events)


def in_memory() -> Backend:
    users = FakeUsers()
    return Backend(users, users, users, FakeListings(users), FakeMirror[Calendar](users), FakeMirror[Event](users))


def observe(call: Callable[[], Any]) -> Any:
    """What a call answered, or the kind of error it raised."""
    try:
        return call()
    except Exception as exc:
        return type(exc).__name__


def users_scenario(b: Backend) -> list[Any]:
    """Pings, claims, the lease, releases, the due index, token writes and re-authorisation."""
    seen: list[Any] = []
    b.tokens.save_authorization(UserIdentity(USER, "Ada"), GRANT, T0)
    record = b.users.get(USER)
    seen.append(record)
    seen.append(b.users.ping_and_claim(USER, T0, T0 + 120))
    seen.append(b.users.ping_and_claim(USER, T0 + 1, T0 + 121, frozenset({"c1"})))
    seen.append(b.users.mark_dirty(USER, T0 + 1, frozenset({"c1"})))
    seen.append(b.users.claim_invocation(USER, T0 + 1, T0 + 121))
    seen.append(b.users.claim_invocation(USER, T0 + 120, T0 + 240))
    seen.append(b.users.due_users(T0 + 239, 10))
    seen.append(b.users.due_users(T0 + 240, 10))
    seen.append(b.users.acquire_lease(USER, "a", T0 + 130, T0 + 430))
    seen.append(b.users.acquire_lease(USER, "a", T0 + 131, T0 + 431))
    seen.append(observe(lambda: b.users.acquire_lease("ou_nobody", "a", T0, T0 + 1)))
    fence = Fence(USER, "a")
    seen.append(b.users.release_after_success(fence, T0 + 140, seen_dirty_seq=1, due_at=T0 + 500))
    seen.append(
        b.users.release_after_success(
            fence, T0 + 140, seen_dirty_seq=2, due_at=T0 + 500, handled_calendars=frozenset({"c1"}), items_reduced=3
        )
    )
    seen.append(b.users.get(USER))
    seen.append(observe(lambda: b.users.release_after_success(fence, T0 + 141, seen_dirty_seq=2, due_at=T0)))
    b.users.release_after_failure(fence, code=1500, message="not ours any more", due_at=T0)
    # the refresh of a token pair, under a new lease
    seen.append(observe(lambda: b.tokens.begin_refresh(fence, T0 + 150, 1)))
    assert b.users.acquire_lease(USER, "b", T0 + 150, T0 + 450) is not None
    second = Fence(USER, "b")
    seen.append(observe(lambda: b.tokens.begin_refresh(second, T0 + 151, 7)))
    seen.append(observe(lambda: b.tokens.begin_refresh(second, T0 + 151, 1)))
    seen.append(b.users.get(USER))
    rotated = SealedGrant(b"sealed-access-2", T0 + 9000, b"sealed-refresh-2", None)
    seen.append(b.tokens.save_tokens(USER, T0 + 152, rotated, token_version=1))
    seen.append(b.tokens.save_tokens(USER, T0 + 153, rotated, token_version=1))  # a retry finds its own write
    other = SealedGrant(b"sealed-access-3", T0 + 9000, None, None)
    seen.append(observe(lambda: b.tokens.save_tokens(USER, T0 + 154, other, token_version=1)))
    seen.append(b.tokens.seal_stored_tokens(second, T0 + 155, other, token_version=1))
    seen.append(b.users.get(USER))
    b.users.release_after_failure(second, code=1500, message="x" * 600, due_at=T0 + 600)
    seen.append(b.users.get(USER))
    # a user who must authorise again leaves the due index and is counted
    assert b.users.acquire_lease(USER, "c", T0 + 700, T0 + 900) is not None
    third = Fence(USER, "c")
    seen.append(b.tokens.mark_reauth_required(third, T0 + 701, token_version=1, code=20064, message="m", cause="x"))
    seen.append(
        b.tokens.mark_reauth_required(
            third, T0 + 701, token_version=2, code=20064, message="m", cause="refresh_token_refused"
        )
    )
    seen.append(b.users.get(USER))
    seen.append((b.users.due_users(T0 + 10**6, 10), b.users.count_awaiting_reauth()))
    seen.append((b.users.mark_dirty(USER, T0 + 800), b.users.ping_and_claim(USER, T0 + 800, T0 + 900)))
    health = b.health.get_health(USER)
    seen.append({name: health.get(name) for name in ("status", "reauth_cause", "dirty_seq", "consecutive_failures")})
    return seen


def listings_scenario(b: Backend) -> list[Any]:
    """Listing state of the calendar list and of a calendar's events; mirror writes; all under the lease."""
    seen: list[Any] = []
    b.tokens.save_authorization(UserIdentity(USER), GRANT, T0)
    assert b.users.acquire_lease(USER, "a", T0, T0 + 300) is not None
    fence, calendars, events = Fence(USER, "a"), CollectionId(USER), CollectionId(USER, "c1")
    checkpoint = Checkpoint("full", "page-2", frozenset({"x", "y"}), T0)
    seen.append(b.listings.save_checkpoint(fence, T0 + 1, calendars, checkpoint))
    seen.append(b.users.get(USER).calendar_list)
    outcome = ListingOutcome("full", None, True, HeldSweep(6, T0), 10, 2)
    b.listings.commit(fence, T0 + 2, calendars, outcome)
    seen.append(b.users.get(USER).calendar_list)
    b.listings.discard_sync_state(fence, T0 + 3, calendars)
    seen.append(b.users.get(USER).calendar_list)
    b.listings.begin_events(fence, T0 + 4, "c1")
    seen.append(b.listings.event_listing(USER, "c1"))
    seen.append(b.listings.save_checkpoint(fence, T0 + 5, events, checkpoint))
    b.listings.commit(fence, T0 + 6, events, ListingOutcome("full", "e1", False, None, 3, 0))
    b.listings.mark_events_subscribed(fence, T0 + 7, "c1")
    seen.append(b.listings.event_listings(USER))
    seen.append({cid: summary.get("events_mirrored") for cid, summary in b.listings.summaries(USER).items()})
    # the mirror tables: calendars, and a recurring event with its exceptions
    seen.append(b.calendars.apply(fence, T0 + 8, calendars, upserts=[Calendar("c1", {"summary": "One", "color": 3})]))
    master = Event("uid_0", {"summary": "Weekly", "recurrence": "FREQ=WEEKLY"})
    moved = Event("uid_1800000000", {"is_exception": True, "recurring_event_id": "uid_0", "summary": "Moved"})
    other = Event("other_0", {"summary": "Lunch"})
    seen.append(b.events.apply(fence, T0 + 9, events, upserts=[master, moved, other], deletions=[]))
    seen.append(b.events.apply(fence, T0 + 10, events, deletions=[other]))
    seen.append(sorted((k, s.live) for k, s in b.events.load_all(events).items()))
    seen.append(sorted(b.events.load_some(events, ["uid_0", "missing"])))
    seen.append(sorted(b.events.load_children(events, ["uid_0"])))
    seen.append(sorted((k, dict(s.item.fields)) for k, s in b.calendars.load_all(calendars).items()))
    b.listings.retire_events(fence, T0 + 11, "c1")
    seen.append(b.listings.event_listing(USER, "c1"))
    # once the lease is gone (expired and taken), nothing more is written
    assert b.users.acquire_lease(USER, "b", T0 + 300, T0 + 600) is not None
    seen.append(observe(lambda: b.listings.save_checkpoint(fence, T0 + 301, calendars, checkpoint)))
    seen.append(observe(lambda: b.listings.commit(fence, T0 + 301, events, outcome)))
    seen.append(observe(lambda: b.calendars.apply(fence, T0 + 301, calendars, deletions=[Calendar("c1", {})])))
    seen.append(len(b.calendars.load_all(calendars)))
    return seen


@pytest.mark.parametrize("scenario", [users_scenario, listings_scenario], ids=["users", "listings_and_mirror"])
def test_the_fakes_answer_like_the_dynamodb_adapters(
    harness: Harness, scenario: Callable[[Backend], list[Any]]
) -> None:
    # GIVEN the same scenario of writes and reads
    # WHEN it runs against DynamoDB Local and against the fakes
    real, fake = scenario(dynamodb(harness)), scenario(in_memory())
    # THEN every answer is the same, step by step
    for step, (expected, got) in enumerate(zip(real, fake, strict=True)):
        assert got == expected, f"step {step}: DynamoDB answered {expected!r}, the fake {got!r}"
