"""One listing engine for every mirrored collection: a user's calendar list, and each calendar's events.

Feishu gives both the same machinery: a full listing pages with ``page_token`` until ``has_more`` is
false and ends with a ``sync_token``; later listings send that token and get only the changes; 190008
means the token (or a page token) expired. The engine runs one listing of one ``Collection`` to its end
under the user's lease: resume a checkpoint, else incremental, else full; write only what changed;
checkpoint after each page that has a successor; commit the new ``sync_token`` only after the last
page; on 190008 restart as a full listing whose end sweeps away what it no longer contains — unless
that looks like a mass deletion, which is held until a later full listing confirms it.

A ``Collection`` says where the items and the listing state live and how a page is fetched (the
caller wraps token refresh and deadlines into ``fetch``). The planning functions are pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from feishu_mirror.errors import FeishuError, SyncTokenExpired
from feishu_mirror.models import Checkpoint, HeldSweep, Item, ListingState, Page, Stored, SyncKind
from feishu_mirror.observability import count, logger

MASS_DELETE_MIN = 5
MASS_DELETE_FRACTION = 0.5


# ------------------------------------------------------------------------------ pure planning
@dataclass(frozen=True, slots=True)
class PagePlan[T: Item]:
    """What one page changes in the mirror."""

    upserts: tuple[T, ...]
    deletions: tuple[T, ...]
    live_delta: int
    listed_ids: frozenset[str]


def plan_page[T: Item](entries: Iterable[tuple[T, bool]], current: Mapping[str, Stored[T]]) -> PagePlan[T]:
    """Compare a page with what the mirror holds: new or changed items, and deletions.

    An entry identical to the stored live item writes nothing. Deleted entries tombstone a live item
    (keeping the latest known fields) and are ignored when nothing live is stored.
    """
    view = dict(current)
    changes: dict[str, tuple[T, bool]] = {}
    live_delta = 0
    listed: set[str] = set()
    for item, is_deleted in entries:
        key = item.key
        stored = view.get(key)
        was_live = stored is not None and stored.live
        if is_deleted:
            listed.discard(key)
            if was_live:
                assert stored is not None
                tomb = item if item.fields else stored.item
                changes[key] = (tomb, True)
                view[key] = Stored(tomb, deleted_at=0)
                live_delta -= 1
            continue
        listed.add(key)
        if was_live and stored is not None and dict(stored.item.fields) == dict(item.fields):
            continue
        changes[key] = (item, False)
        view[key] = Stored(item)
        if not was_live:
            live_delta += 1
    return PagePlan(
        upserts=tuple(i for i, deleted in changes.values() if not deleted),
        deletions=tuple(i for i, deleted in changes.values() if deleted),
        live_delta=live_delta,
        listed_ids=frozenset(listed),
    )


def is_mass_deletion(*, live_before: int, missing: int, listed: int) -> bool:
    """A full listing that empties or drastically shrinks a collection is not trusted at once."""
    if missing == 0 or live_before == 0:
        return False
    return listed == 0 or (missing >= MASS_DELETE_MIN and missing > MASS_DELETE_FRACTION * live_before)


def choose_listing(state: ListingState, now: int) -> tuple[SyncKind, str, set[str], int]:
    """Resume a checkpoint, else incremental with the sync_token, else a full listing."""
    checkpoint = state.checkpoint
    if checkpoint:
        return checkpoint.kind, checkpoint.page_token, set(checkpoint.seen_ids), checkpoint.started_at
    if state.sync_token:
        return "incremental", "", set(), now
    # First listing, after 190008, or while deletions are held (those listings keep no sync_token).
    return "full", "", set(), now


# ------------------------------------------------------------------------------ the collection
@dataclass(frozen=True, slots=True)
class MetricNames:
    """What a collection's listings count under (calendars keep their historical names)."""

    full: str
    incremental: str
    resumed: str
    pages: str
    upserted: str
    deleted: str
    resets: str
    held: str
    confirmed: str


class Collection[T: Item](Protocol):
    """One mirrored collection, as the engine sees it. Writes are fenced by the user's lease."""

    name: str
    metrics: MetricNames

    def fetch(self, *, page_token: str, sync_token: str | None) -> Page[T]:
        """One page: a follow-up page (``page_token``), the changes since ``sync_token``, or a full first page."""
        ...

    def load_all(self) -> dict[str, Stored[T]]:
        """Every stored item, tombstones included."""
        ...

    def load_some(self, keys: Iterable[str]) -> dict[str, Stored[T]]:
        """The stored items with these keys."""
        ...

    def apply(self, now: int, upserts: tuple[T, ...], deletions: tuple[T, ...]) -> None:
        """Write changed items and tombstones."""
        ...

    def save_checkpoint(self, now: int, checkpoint: Checkpoint) -> None:
        """Remember how far the listing got."""
        ...

    def discard_sync_state(self, now: int) -> None:
        """Forget the sync token and checkpoint (after 190008)."""
        ...

    def commit(
        self, now: int, *, sync_token: str | None, mirrored: int, kind: str, held_sweep: HeldSweep | None, reset: bool
    ) -> None:
        """After the last page: the new sync token (or none), the live count, the held sweep."""
        ...


@dataclass(slots=True)
class Tally:
    """What listings wrote, summed over an invocation."""

    listings: int = 0
    pages: int = 0
    upserted: int = 0
    deleted: int = 0
    held: int = 0
    kind: str = ""


@dataclass(slots=True)
class _Position[T: Item]:
    """Where a running listing stands."""

    kind: SyncKind
    page_token: str
    cursor: str | None  # incremental: the sync token the changes are asked from (the stored one, then each page's)
    seen: set[str]  # full: the keys listed so far
    started_at: int
    existing: dict[str, Stored[T]] = field(default_factory=dict)  # full: every stored item, kept current
    live_before: int = 0

    @property
    def incremental_cursor(self) -> str | None:
        """The sync token to send (a full listing sends none)."""
        return self.cursor if self.kind == "incremental" else None

    def load(self, collection: Collection[T]) -> None:
        """Before a full listing: what the mirror holds."""
        self.existing = collection.load_all()
        self.live_before = sum(1 for s in self.existing.values() if s.live)


class ListingEngine:
    """Runs one listing of one collection to its end (see the module docstring)."""

    def __init__(self, *, mass_delete_confirm_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self._confirm_seconds = mass_delete_confirm_seconds
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock())

    def run[T: Item](self, collection: Collection[T], state: ListingState, tally: Tally) -> HeldSweep | None:
        """List, write and commit; returns the held sweep when deletions were held back."""
        names = collection.metrics
        kind, page_token, seen, started_at = choose_listing(state, self._now())
        tally.listings += 1
        tally.kind = tally.kind or ("resume" if state.checkpoint else kind)
        count(names.resumed if state.checkpoint else (names.full if kind == "full" else names.incremental))
        position = _Position[T](kind, page_token, state.sync_token, seen, started_at)
        if kind == "full":
            position.load(collection)
        reset = False
        mirrored = state.mirrored
        while True:
            try:
                page = collection.fetch(page_token=position.page_token, sync_token=position.incremental_cursor)
            except SyncTokenExpired:
                if reset:
                    raise
                count(names.resets)
                logger.info("sync_token_expired", extra={"collection": collection.name, "kind": position.kind})
                reset = True
                collection.discard_sync_state(self._now())
                self._restart_full(collection, position, tally)
                continue
            mirrored += self._apply_page(collection, position, page, tally)
            if not page.has_more:
                break
            self._advance(collection, position, page, tally)
        held: HeldSweep | None = None
        if position.kind == "full":
            held, mirrored = self._sweep(collection, state=state, tally=tally, position=position)
        sync_token = page.sync_token or (state.sync_token if position.kind == "incremental" else None)
        collection.commit(
            self._now(),
            sync_token=None if held else sync_token,
            mirrored=max(0, mirrored),
            kind=position.kind,
            held_sweep=held,
            reset=reset,
        )
        return held

    def _apply_page[T: Item](
        self, collection: Collection[T], position: _Position[T], page: Page[T], tally: Tally
    ) -> int:
        """Write what one page changes; returns the change in live items."""
        tally.pages += 1
        count(collection.metrics.pages)
        full = position.kind == "full"
        current = position.existing if full else collection.load_some(item.key for item, _ in page.entries)
        plan = plan_page(page.entries, current)
        self._write(collection, tally, plan.upserts, plan.deletions)
        if full:
            position.seen |= plan.listed_ids
            position.seen -= {item.key for item in plan.deletions}
            for item in plan.upserts:
                position.existing[item.key] = Stored(item)
            for item in plan.deletions:
                position.existing[item.key] = Stored(item, deleted_at=0)
        return plan.live_delta

    def _advance[T: Item](self, collection: Collection[T], position: _Position[T], page: Page[T], tally: Tally) -> None:
        """After a page with more to come: follow its page token (checkpointed), or its sync token."""
        if page.page_token:
            position.page_token = page.page_token
            checkpoint = Checkpoint(position.kind, page.page_token, frozenset(position.seen), position.started_at)
            collection.save_checkpoint(self._now(), checkpoint)
        elif position.kind == "incremental" and page.sync_token and page.sync_token != position.cursor:
            # Feishu hands out page tokens for event listings only with anchor_time: an incremental
            # listing's changes continue from each page's sync_token. That token only marks progress:
            # nothing is checkpointed or committed before the last page (a listing cut short starts again
            # from the stored token, and what it had applied already writes nothing the second time).
            position.cursor = page.sync_token
        elif position.kind == "full":
            raise FeishuError(-1, "has_more without a page_token", log_id=page.log_id)
        else:  # more changes and no way to ask for them: list in full instead
            count("ListingsWithoutContinuation")
            logger.warning("listing_without_continuation", extra={"collection": collection.name})
            self._restart_full(collection, position, tally)

    def _restart_full[T: Item](self, collection: Collection[T], position: _Position[T], tally: Tally) -> None:
        position.kind, position.page_token, position.seen, position.started_at = "full", "", set(), self._now()
        position.load(collection)
        tally.kind = "full"

    def _sweep[T: Item](
        self,
        collection: Collection[T],
        *,
        state: ListingState,
        tally: Tally,
        position: _Position[T],
    ) -> tuple[HeldSweep | None, int]:
        """End of a full listing: tombstone live items it did not contain, unless suspicious.

        Returns the held sweep (if any) and the number of live items the mirror now holds.
        """
        now = self._now()
        names = collection.metrics
        live = [s.item for s in position.existing.values() if s.live]
        missing = tuple(item for item in live if item.key not in position.seen)
        listed = len(live) - len(missing)
        live_before = max(position.live_before, len(missing))
        if is_mass_deletion(live_before=live_before, missing=len(missing), listed=listed):
            held = state.held_sweep
            confirmed = held is not None and now - held.first_seen_at >= self._confirm_seconds
            extra = {"collection": collection.name, "missing": len(missing), "live": len(live)}
            if not confirmed:
                count(names.held)
                logger.warning("mass_deletion_held", extra=extra)
                tally.held += len(missing)
                return HeldSweep(len(missing), held.first_seen_at if held else now), len(live)
            count(names.confirmed)
            logger.warning("mass_deletion_confirmed", extra=extra)
        if missing:
            self._write(collection, tally, (), missing)
        return None, listed

    def _write[T: Item](
        self, collection: Collection[T], tally: Tally, upserts: tuple[T, ...], deletions: tuple[T, ...]
    ) -> None:
        if not upserts and not deletions:
            return
        collection.apply(self._now(), upserts, deletions)
        tally.upserted += len(upserts)
        tally.deleted += len(deletions)
        count(collection.metrics.upserted, len(upserts))
        count(collection.metrics.deleted, len(deletions))
