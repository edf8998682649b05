"""A mirrored collection as the ``ListingEngine`` sees it (``listing.Collection``), made of its parts:
its pages from Feishu (a function the sync gives, with token refresh and deadline inside), its items in
the mirror (``MirroredItems``) and its listing state (``ListingRecords``), every write under the sync's
fence. The two ports are the sync's, which also reads and retires through them; the DynamoDB adapters
``dynamodb.mirror`` and ``dynamodb.listings`` satisfy them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from feishu_mirror.listing import MetricNames
from feishu_mirror.models import (
    Checkpoint,
    CollectionId,
    EventListing,
    Fence,
    Item,
    ListingOutcome,
    Page,
    Stored,
)


class MirroredItems[T: Item](Protocol):
    """The mirror's items of each collection (``dynamodb.mirror.CalendarStore``, ``EventStore``)."""

    def load_all(self, collection: CollectionId) -> dict[str, Stored[T]]:
        """Every item, tombstones included."""
        ...

    def load_some(self, collection: CollectionId, keys: Iterable[str]) -> dict[str, Stored[T]]:
        """The items with these keys."""
        ...

    def load_children(self, collection: CollectionId, parent_keys: Iterable[str]) -> dict[str, Stored[T]]:
        """The items that belong to these (the exceptions of recurring events' masters)."""
        ...

    def apply(
        self,
        fence: Fence,
        now: int,
        collection: CollectionId,
        *,
        upserts: Sequence[T] = (),
        deletions: Sequence[T] = (),
    ) -> int:
        """Write changed items and tombstones under the lease. Raises ``LeaseLost``."""
        ...


class ListingRecords(Protocol):
    """Where each collection's listing stands (``dynamodb.listings.ListingStates``); writes under the lease."""

    def save_checkpoint(self, fence: Fence, now: int, collection: CollectionId, checkpoint: Checkpoint) -> bool:
        """Remember how far the listing got; False when it is too big to keep."""
        ...

    def commit(self, fence: Fence, now: int, collection: CollectionId, outcome: ListingOutcome) -> None:
        """After the last page: the new sync token, the counts and the held sweep."""
        ...

    def discard_sync_state(self, fence: Fence, now: int, collection: CollectionId) -> None:
        """Forget the sync token and checkpoint (after 190008)."""
        ...

    def event_listings(self, open_id: str) -> dict[str, EventListing]:
        """Every calendar's event-listing state of the user."""
        ...

    def event_listing(self, open_id: str, calendar_id: str) -> EventListing | None:
        """One calendar's event-listing state, or None."""
        ...

    def begin_events(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Record a calendar's first listing before any of its events is written."""
        ...

    def mark_events_subscribed(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Record that the calendar's event-change subscription was (re)asserted."""
        ...

    def retire_events(self, fence: Fence, now: int, calendar_id: str) -> None:
        """Forget a calendar that left the user's list."""
        ...


class MirrorCollection[T: Item]:
    """One mirrored collection as the ``ListingEngine`` sees it (``listing.Collection``): its pages from
    Feishu, its items in the mirror, its listing state — each write under the sync's fence."""

    def __init__(
        self,
        collection: CollectionId,
        fence: Fence,
        *,
        name: str,
        metrics: MetricNames,
        fetch: Callable[[str, str | None], Page[T]],
        items: MirroredItems[T],
        listings: ListingRecords,
    ) -> None:
        self.name, self.metrics = name, metrics
        self._collection, self._fence = collection, fence
        self._fetch, self._items, self._listings = fetch, items, listings

    def fetch(self, *, page_token: str, sync_token: str | None) -> Page[T]:
        return self._fetch(page_token, sync_token)

    def load_all(self) -> dict[str, Stored[T]]:
        return self._items.load_all(self._collection)

    def load_some(self, keys: Iterable[str]) -> dict[str, Stored[T]]:
        return self._items.load_some(self._collection, keys)

    def load_children(self, parent_keys: Iterable[str]) -> dict[str, Stored[T]]:
        return self._items.load_children(self._collection, parent_keys)

    def apply(self, now: int, upserts: tuple[T, ...], deletions: tuple[T, ...]) -> None:
        self._items.apply(self._fence, now, self._collection, upserts=upserts, deletions=deletions)

    def save_checkpoint(self, now: int, checkpoint: Checkpoint) -> None:
        self._listings.save_checkpoint(self._fence, now, self._collection, checkpoint)

    def discard_sync_state(self, now: int) -> None:
        self._listings.discard_sync_state(self._fence, now, self._collection)

    def commit(self, now: int, outcome: ListingOutcome) -> None:
        self._listings.commit(self._fence, now, self._collection, outcome)
