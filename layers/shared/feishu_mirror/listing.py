"""One listing engine for every mirrored collection: a user's calendar list, and each calendar's events.

Feishu gives both the same machinery: a full listing pages with ``page_token`` until ``has_more`` is
false and ends with a ``sync_token``; later listings send that token and get only the changes; 190008
means the token (or a page token) expired. The engine runs one listing of one ``Collection`` to its end
under the user's lease: resume a checkpoint, else incremental, else full; write only what changed;
checkpoint after each page that has a successor; commit the new ``sync_token`` only after the last
page; on 190008 restart as a full listing whose end sweeps away what it no longer contains — unless
that looks like a mass deletion, which is held until a later full listing confirms it.

Items may belong to a parent item of the same collection (the exceptions of a recurring event belong
to its master): they live only while it does. A deleted parent takes its children with it in the same
write, wherever they are; at the end of a listing, children whose parent is not live are retired (a full
listing may list a child before its parent; an increment may bring a series made and deleted since the
last listing, its master on any page).

A ``Collection`` says where the items and the listing state live and how a page is fetched (the
caller wraps token refresh and deadlines into ``fetch``). The planning functions are pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from feishu_mirror.errors import FeishuError, SyncTokenExpired
from feishu_mirror.models import Checkpoint, HeldSweep, Item, ListingOutcome, ListingState, Page, Stored, SyncKind
from feishu_mirror.observability import count, logger
from feishu_mirror.storable import same_value

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
    reduced_delta: int = 0  # the change in live items stored reduced


def unchanged(stored: Item, item: Item) -> bool:
    """True when ``item`` would write nothing over ``stored``: the same fields by value (numbers as
    numbers, ``1 == 1.0``), and the same fields dropped for the same reasons."""
    return dict(stored.reduced) == dict(item.reduced) and same_value(dict(stored.fields), dict(item.fields))


def plan_page[T: Item](
    entries: Iterable[tuple[T, bool]], current: Mapping[str, Stored[T]], *, full_listing: bool = False
) -> PagePlan[T]:
    """Compare a page with what the mirror holds: new or changed items, and deletions.

    An entry identical to the stored live item writes nothing. Deleted entries tombstone a live item
    (keeping the latest known fields) and are ignored when nothing live is stored. Items that belong to
    a parent (the exceptions of a recurring event's master) follow it: a deleted parent tombstones its
    live children in ``current`` (the caller loads them), and in an incremental listing an entry whose
    parent the mirror holds as a tombstone is a deletion too. A full listing may list a child before its
    parent, so there children are settled at the end of the listing (``ListingEngine``), not here.
    """
    view = dict(current)
    children: dict[str, set[str]] = {}
    for key, held in view.items():
        if held.live and held.item.parent_key:
            children.setdefault(held.item.parent_key, set()).add(key)
    changes: dict[str, tuple[T, bool]] = {}
    live_delta = reduced_delta = 0
    listed: set[str] = set()

    def tombstone(key: str, tomb: T, was: Stored[T]) -> None:
        nonlocal live_delta, reduced_delta
        changes[key] = (tomb, True)
        view[key] = Stored(tomb, deleted_at=0)
        live_delta -= 1
        reduced_delta -= bool(was.item.reduced)
        listed.discard(key)

    for item, listed_deleted in entries:
        key = item.key
        stored = view.get(key)
        was_live = stored is not None and stored.live
        parent = item.parent_key
        parent_stored = view.get(parent) if parent and not full_listing else None
        if listed_deleted or (parent_stored is not None and not parent_stored.live):
            listed.discard(key)
            if was_live:
                assert stored is not None
                tombstone(key, item if item.fields else stored.item, stored)
            for child in sorted(children.pop(key, ())):
                child_stored = view[child]
                if child_stored.live and child_stored.item.parent_key == key:
                    tombstone(child, child_stored.item, child_stored)
            continue
        listed.add(key)
        if parent:
            children.setdefault(parent, set()).add(key)
        if was_live and stored is not None and unchanged(stored.item, item):
            continue
        changes[key] = (item, False)
        view[key] = Stored(item)
        reduced_delta += bool(item.reduced) - bool(was_live and stored is not None and stored.item.reduced)
        if not was_live:
            live_delta += 1
    return PagePlan(
        upserts=tuple(i for i, deleted in changes.values() if not deleted),
        deletions=tuple(i for i, deleted in changes.values() if deleted),
        live_delta=live_delta,
        listed_ids=frozenset(listed),
        reduced_delta=reduced_delta,
    )


def orphans[T: Item](live: Iterable[T]) -> tuple[T, ...]:
    """Of these live items, the ones whose parent is not among them (an exception whose master is gone)."""
    items = tuple(live)
    keys = {item.key for item in items}
    return tuple(item for item in items if item.parent_key and item.parent_key not in keys)


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
    resumed_then_incremental: str  # a resumed listing followed by an incremental pass (``sync``)


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

    def load_children(self, parent_keys: Iterable[str]) -> dict[str, Stored[T]]:
        """The stored items that belong to these (the exceptions of recurring events' masters)."""
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

    def commit(self, now: int, outcome: ListingOutcome) -> None:
        """After the last page: the new sync token (or none), the held sweep and the live and reduced counts."""
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

    def add(self, other: Tally) -> None:
        """Count ``other``'s listings too (listings that ran side by side)."""
        self.listings += other.listings
        self.pages += other.pages
        self.upserted += other.upserted
        self.deleted += other.deleted
        self.held += other.held
        self.kind = self.kind or other.kind


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
    # incremental: listed children whose parent was not live in the mirror then (new, or deleted unseen)
    unsettled: dict[str, T] = field(default_factory=dict)

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

    def sync_collection[T: Item](self, collection: Collection[T], state: ListingState, tally: Tally) -> ListingOutcome:
        """List, write and commit; returns the held sweep (when deletions were held back) and the counts."""
        names = collection.metrics
        kind, page_token, seen, started_at = choose_listing(state, self._now())
        tally.listings += 1
        tally.kind = tally.kind or ("resume" if state.checkpoint else kind)
        count(names.resumed if state.checkpoint else (names.full if kind == "full" else names.incremental))
        position = _Position[T](kind, page_token, state.sync_token, seen, started_at)
        if kind == "full":
            position.load(collection)
        reset = False
        mirrored, reduced = state.mirrored, state.reduced
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
            plan = self._apply_page(collection, position, page, tally)
            mirrored += plan.live_delta
            reduced += plan.reduced_delta
            if not page.has_more:
                break
            self._advance(collection, position, page, tally)
        held: HeldSweep | None = None
        if position.kind == "full":
            held, mirrored, reduced = self._sweep(collection, state=state, tally=tally, position=position)
        elif position.unsettled:
            retired = self._settle(collection, position, tally)
            mirrored -= len(retired)
            reduced -= sum(1 for item in retired if item.reduced)
        sync_token = page.sync_token or (state.sync_token if position.kind == "incremental" else None)
        outcome = ListingOutcome(
            position.kind, None if held else (sync_token or None), reset, held, max(0, mirrored), max(0, reduced)
        )
        collection.commit(self._now(), outcome)
        return outcome

    def _apply_page[T: Item](
        self, collection: Collection[T], position: _Position[T], page: Page[T], tally: Tally
    ) -> PagePlan[T]:
        """Write what one page changes; returns the plan (its changes in live and reduced items)."""
        tally.pages += 1
        count(collection.metrics.pages)
        full = position.kind == "full"
        current = position.existing if full else self._current(collection, page)
        plan = plan_page(page.entries, current, full_listing=full)
        self._write(collection, tally, plan.upserts, plan.deletions)
        if not full:
            self._note_unsettled(position, page, current, plan)
        if full:
            position.seen |= plan.listed_ids
            position.seen -= {item.key for item in plan.deletions}
            for item in plan.upserts:
                position.existing[item.key] = Stored(item)
            for item in plan.deletions:
                position.existing[item.key] = Stored(item, deleted_at=0)
        return plan

    @staticmethod
    def _note_unsettled[T: Item](
        position: _Position[T], page: Page[T], current: Mapping[str, Stored[T]], plan: PagePlan[T]
    ) -> None:
        """Remember the listed children of an increment whose parent the mirror did not hold live: a
        series made since the last listing may also have been deleted since, its master on any page."""
        live = {key for key, stored in current.items() if stored.live}
        live = (live - {item.key for item in plan.deletions}) | {item.key for item in plan.upserts}
        for item, _ in page.entries:
            position.unsettled.pop(item.key, None)
            if item.key in plan.listed_ids and item.parent_key and item.parent_key not in live:
                position.unsettled[item.key] = item

    def _settle[T: Item](self, collection: Collection[T], position: _Position[T], tally: Tally) -> tuple[T, ...]:
        """End of an increment: tombstone the children it listed whose parent is not live now; returns them."""
        children = position.unsettled
        stored = collection.load_some(
            set(children) | {item.parent_key for item in children.values() if item.parent_key}
        )
        retired = tuple(
            s.item
            for key, s in stored.items()
            if key in children and s.live and not (s.item.parent_key in stored and stored[s.item.parent_key].live)
        )
        if retired:
            self._write(collection, tally, (), retired)
        return retired

    @staticmethod
    def _current[T: Item](collection: Collection[T], page: Page[T]) -> dict[str, Stored[T]]:
        """For an incremental page: the stored items it names, their parents, and the children of the
        parents it deletes (wherever they are: a master's exceptions need not be on the page)."""
        keys = {item.key for item, _ in page.entries} | {item.parent_key for item, _ in page.entries if item.parent_key}
        current = collection.load_some(keys)
        parents = sorted(
            item.key
            for item, deleted in page.entries
            if deleted and (item.is_parent or (item.key in current and current[item.key].item.is_parent))
        )
        if parents:
            current = {**collection.load_children(parents), **current}
        return current

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
        position.unsettled.clear()  # a full listing settles every child at its end
        position.load(collection)
        tally.kind = "full"

    def _sweep[T: Item](
        self,
        collection: Collection[T],
        *,
        state: ListingState,
        tally: Tally,
        position: _Position[T],
    ) -> tuple[HeldSweep | None, int, int]:
        """End of a full listing: tombstone live items it did not contain, unless suspicious, and the
        children whose parent is not live (whatever the listing's order, it has seen every parent now).

        Returns the held sweep (if any) and how many live items, and live reduced items, the mirror holds.
        """
        now = self._now()
        names = collection.metrics
        live = [s.item for s in position.existing.values() if s.live]
        missing = tuple(item for item in live if item.key not in position.seen)
        listed = len(live) - len(missing)
        live_before = max(position.live_before, len(missing))
        hold = False
        if is_mass_deletion(live_before=live_before, missing=len(missing), listed=listed):
            previous = state.held_sweep
            hold = previous is None or now - previous.first_seen_at < self._confirm_seconds
            extra = {"collection": collection.name, "missing": len(missing), "live": len(live)}
            count(names.held if hold else names.confirmed)
            logger.warning("mass_deletion_held" if hold else "mass_deletion_confirmed", extra=extra)
        gone = set() if hold else {item.key for item in missing}
        remaining = [item for item in live if item.key not in gone]
        orphaned = orphans(remaining)
        held: HeldSweep | None = None
        if hold:
            orphan_keys = {item.key for item in orphaned}
            missing = tuple(item for item in missing if item.key not in orphan_keys)
            tally.held += len(missing)
            held = HeldSweep(len(missing), state.held_sweep.first_seen_at if state.held_sweep else now)
            missing = ()
        if missing or orphaned:
            self._write(collection, tally, (), missing + orphaned)
        retired = {item.key for item in orphaned}
        remaining = [item for item in remaining if item.key not in retired]
        return held, len(remaining), sum(1 for item in remaining if item.reduced)

    def _write[T: Item](
        self, collection: Collection[T], tally: Tally, upserts: tuple[T, ...], deletions: tuple[T, ...]
    ) -> None:
        if not upserts and not deletions:
            return
        collection.apply(self._now(), upserts, deletions)
        reduced = [item for item in upserts if item.reduced]
        if reduced:
            count("ItemsReduced", len(reduced))
            for item in reduced:
                logger.warning(
                    "item_reduced",
                    extra={"collection": collection.name, "key": item.key, "reduced": dict(item.reduced)},
                )
        tally.upserted += len(upserts)
        tally.deleted += len(deletions)
        count(collection.metrics.upserted, len(upserts))
        count(collection.metrics.deleted, len(deletions))
