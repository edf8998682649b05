"""The operator's view: every user's health, one user's calendars, and "resync this user now".

``StatusService`` reads through ``store.UserStore`` (an allow-listed projection: never a token, a
sync token or a page token), ``store.CalendarStore`` and ``store.EventListingStore`` (projected
too: event counts and times, never a sync token), and starts syncs through the same
``pings.PingDispatcher`` the callback uses, so an operator's resync coalesces with running syncs
exactly like a push does. The ``render_*`` functions turn the views into small self-contained HTML
pages (every value escaped, no script); ``wants_json`` decides between HTML and JSON from ``Accept``.
The status routes are IAM-protected in the template: nothing here authenticates.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

from feishu_mirror.errors import MirrorError
from feishu_mirror.health import STATE_ORDER, UserHealth
from feishu_mirror.identifiers import is_open_id
from feishu_mirror.models import CALENDAR_FIELDS
from feishu_mirror.observability import count, logger
from feishu_mirror.pings import PingDispatcher
from feishu_mirror.store import CalendarStore, EventListingStore, UnknownUser, UserStore

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
RESYNC_REASON = "operator_resync"

ResyncOutcome = Literal["started", "coalesced", "invoke_failed"]
RESYNC_MESSAGES: dict[str, str] = {
    "started": "A sync was started.",
    "coalesced": "A sync is already running or queued; it will pick up the latest state.",
    "invoke_failed": "The sync could not be started now; the user is due and the schedule will start it.",
}


class StatusRequestInvalid(MirrorError):
    """A malformed status request (bad ``limit``, ``start`` or open_id); answered with a 400."""


class ReauthorizationPending(MirrorError):
    """The user must consent again (``reauth_required``); no sync can run until they do."""


def valid_open_id(value: str) -> str:
    """The open_id if it is one (``identifiers.is_open_id``); else raises ``StatusRequestInvalid``."""
    if not is_open_id(value):
        raise StatusRequestInvalid("not a valid open_id")
    return value


def page_size(raw: str | None) -> int:
    """The ``limit`` query parameter: 1 to ``MAX_PAGE_SIZE``, ``DEFAULT_PAGE_SIZE`` when absent."""
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise StatusRequestInvalid(f"limit must be a number from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def wants_json(accept: str | None, fmt: str | None = None) -> bool:
    """True when the client prefers JSON: ``?format=json``, or ``Accept`` ranks it above HTML.

    A browser (``text/html`` first), ``*/*`` and no header at all get HTML; ``application/json``
    alone or with a higher q-value than HTML gets JSON.
    """
    if fmt in ("json", "html"):
        return fmt == "json"
    html_q = json_q = 0.0
    for part in (accept or "").split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media == "application/json":
            json_q = max(json_q, q)
        elif media == "text/html":
            html_q = max(html_q, q)
    return json_q > html_q


# Fetch metadata a browser sends with a request its user's page made to this same origin, or one the user
# started themselves (typed, bookmarked); anything else (``same-site``: another port of localhost or a
# sibling subdomain; ``cross-site``) is a page elsewhere trying to use the operator's credentials.
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})


def cross_site(headers: Mapping[str, str]) -> bool:
    """True when a state-changing request (the resync post) comes from another site's page; refuse it.

    ``headers`` have lowercase names (API Gateway's). A browser's ``Sec-Fetch-Site`` decides when it is
    there: it is computed against the address the browser actually posted to, so it stays right behind a
    SigV4-signing proxy on the operator's machine, which rewrites ``Host`` to the execute-api domain while
    ``Origin`` stays ``http://localhost:PORT``. Without it (an older browser, or a page served over plain
    HTTP from another machine), ``Origin`` must name the host the request was sent to:
    ``X-Forwarded-Host`` (its first entry) when a proxy sets it, else ``Host``. ``Origin: null`` (a
    sandboxed frame, a ``data:`` page, a cross-origin redirect) is always refused; the pages' referrer
    policy (``same-origin``) makes the browser send their real origin. No ``Origin`` and no fetch
    metadata is not a browser's cross-site form (curl, awscurl, ``make resync``): allowed, since the
    route's IAM authorisation already stands in front of it.
    """
    origin = headers.get("origin")
    if origin is not None and origin.strip().lower() == "null":
        return True
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site.strip().lower() not in SAME_ORIGIN_FETCH_SITES
    if origin is None:
        return False
    target = (headers.get("x-forwarded-host") or headers.get("host") or "").split(",")[0].strip().lower()
    try:
        sent_from = urlsplit(origin.strip()).netloc.lower()
    except ValueError:  # a malformed Origin (e.g. an unbalanced "[") names no host we serve
        return True
    return not target or sent_from != target


def overview_href(path: str) -> str:
    """The overview's address relative to the request's ``path`` (``status`` from ``/status``,
    ``../status`` from ``/status/<id>``, ``../../status`` from ``/status/<id>/resync``): relative, so it
    also works under a custom domain's base path and behind a proxy."""
    segments = path.split("/")[1:]
    below = len(segments) - 1 - segments.index("status") if "status" in segments else max(len(segments) - 1, 0)
    return "../" * below + "status"


# ---------------------------------------------------------------------------------- views
@dataclass(frozen=True, slots=True)
class Overview:
    """One page of users, worst state first, with the cursor of the next page."""

    users: tuple[UserHealth, ...]
    next_start: str | None
    limit: int
    generated_at: int
    states: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "generated_at": self.generated_at,
            "limit": self.limit,
            "next_start": self.next_start,
            "states_on_this_page": dict(self.states),
            "users": [user.as_dict() for user in self.users],
        }


@dataclass(frozen=True, slots=True)
class MirroredCalendar:
    """A live calendar of the mirror, with the Feishu fields it holds."""

    calendar_id: str
    fields: Mapping[str, Any]
    events: Mapping[str, Any] | None = None  # events_mirrored, synced_at, subscribed_at, held_sweep

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form; ``events`` is null for a calendar whose events are not mirrored (yet)."""
        return {"calendar_id": self.calendar_id, **self.fields, "events": dict(self.events) if self.events else None}


@dataclass(frozen=True, slots=True)
class UserDetail:
    """One user's health, live calendars and how many tombstones the mirror keeps."""

    health: UserHealth
    calendars: tuple[MirroredCalendar, ...]
    tombstones: int
    generated_at: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "generated_at": self.generated_at,
            "user": self.health.as_dict(),
            "calendars": [calendar.as_dict() for calendar in self.calendars],
            "live_calendars": len(self.calendars),
            "tombstones": self.tombstones,
        }


@dataclass(frozen=True, slots=True)
class ResyncRequested:
    """What asking for a resync did."""

    open_id: str
    outcome: ResyncOutcome

    @property
    def message(self) -> str:
        """A sentence for the operator."""
        return RESYNC_MESSAGES[self.outcome]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"open_id": self.open_id, "outcome": self.outcome, "message": self.message}


class StatusService:
    """Reads health and calendars for operators, and starts a user's sync on request."""

    def __init__(
        self,
        *,
        users: UserStore,
        calendars: CalendarStore,
        pings: PingDispatcher,
        stale_after_seconds: int,
        event_listings: EventListingStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._calendars = calendars
        self._event_listings = event_listings
        self._pings = pings
        self._stale_after = stale_after_seconds
        self._clock = clock

    def _health(self, item: Mapping[str, Any], now: int) -> UserHealth:
        return UserHealth.from_item(item, now=now, stale_after_seconds=self._stale_after)

    def overview(self, *, limit: int = DEFAULT_PAGE_SIZE, start: str | None = None) -> Overview:
        """One page of users (a Scan page, see ``UserStore.list_health``), worst state first."""
        now = int(self._clock())
        items, next_start = self._users.list_health(limit, valid_open_id(start) if start else None)
        rank = {state: n for n, state in enumerate(STATE_ORDER)}
        users = sorted((self._health(item, now) for item in items), key=lambda u: (rank[u.state], u.open_id))
        return Overview(
            users=tuple(users),
            next_start=next_start,
            limit=limit,
            generated_at=now,
            states=dict(Counter(user.state for user in users)),
        )

    def user(self, open_id: str) -> UserDetail:
        """One user's health and mirror; raises ``UnknownUser`` or ``StatusRequestInvalid``."""
        now = int(self._clock())
        item = self._users.get_health(valid_open_id(open_id))
        if item is None:
            raise UnknownUser(open_id)
        stored = self._calendars.load_all(open_id)
        events = self._event_listings.summaries(open_id) if self._event_listings else {}
        live = sorted(
            (
                MirroredCalendar(c.item.calendar_id, dict(c.item.fields), events.get(c.item.calendar_id))
                for c in stored.values()
                if c.live
            ),
            key=lambda c: (str(c.fields.get("summary", "")).lower(), c.calendar_id),
        )
        return UserDetail(
            health=self._health(item, now),
            calendars=tuple(live),
            tombstones=sum(1 for c in stored.values() if not c.live),
            generated_at=now,
        )

    def resync(self, open_id: str, *, requested_by: str = "") -> ResyncRequested:
        """Make the user due and start a sync now, coalescing with a running or queued one.

        Raises ``UnknownUser``, ``ReauthorizationPending`` (the user must consent again) or
        ``StatusRequestInvalid``.
        """
        item = self._users.get_health(valid_open_id(open_id))
        if item is None:
            raise UnknownUser(open_id)
        if UserHealth.from_item(item, now=0, stale_after_seconds=self._stale_after).reauth_required:
            raise ReauthorizationPending(open_id)
        outcome = self._pings.dispatch([open_id], reason=RESYNC_REASON)
        if outcome.started:
            result: ResyncOutcome = "started"
        elif outcome.invoke_failed:
            result = "invoke_failed"
        elif outcome.coalesced:
            result = "coalesced"
        else:  # became inactive between the two reads
            raise ReauthorizationPending(open_id)
        count("OperatorResyncs")
        logger.info("operator_resync", extra={"open_id": open_id, "outcome": result, "requested_by": requested_by})
        return ResyncRequested(open_id, result)


# ---------------------------------------------------------------------------------- HTML
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;width:100%;font-size:.92em}th,td{text-align:left;padding:.35em .6em;"
    "border-bottom:1px solid #ddd;vertical-align:top}th{background:#f4f4f4}code{font-size:.9em}"
    ".state{font-weight:600;padding:.1em .5em;border-radius:.8em;white-space:nowrap}"
    ".ok{background:#dff5e1}.syncing{background:#e0ecff}.stale,.never_synced,.held_deletions{background:#fff1cc}"
    ".failing,.reauth_required{background:#ffd9d6}.note{color:#555}.flash{background:#e0ecff;padding:.6em 1em}"
    "dl{display:grid;grid-template-columns:max-content auto;gap:.3em 1.2em}dt{font-weight:600}dd{margin:0}"
)
# The pages are static: no script at all, inline style only, forms only to this origin.
AUTO_REFRESH_SECONDS = 10
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(epoch: int | None, now: int) -> str:
    """``2025-11-24 16:00:00Z (5 min ago)``, or an em dash."""
    if not epoch:
        return "—"
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))
    delta = now - epoch
    ago = abs(delta)
    if ago < 90:
        span = f"{ago} s"
    elif ago < 5400:
        span = f"{ago // 60} min"
    elif ago < 2 * 86400:
        span = f"{ago // 3600} h"
    else:
        span = f"{ago // 86400} d"
    return f"{stamp} ({span} {'ago' if delta >= 0 else 'from now'})"


def _cell(value: Any) -> Any:
    """A Feishu field for a table cell: booleans as yes/no, the rest as they are."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value


def _document(title: str, body: str, *, refresh_to: str | None = None) -> str:
    """A whole page; with ``refresh_to`` (a URL, "" for this one) it reloads itself every
    ``AUTO_REFRESH_SECONDS``, so an operator watching it sees syncs land without pressing anything."""
    refresh = ""
    if refresh_to is not None:
        target = f"; url={refresh_to}" if refresh_to else ""
        refresh = f"<meta http-equiv='refresh' content='{AUTO_REFRESH_SECONDS}{_e(target)}'>"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'>{refresh}"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _state_badge(state: str) -> str:
    return f"<span class='state {_e(state)}' data-state='{_e(state)}'>{_e(state.replace('_', ' '))}</span>"


def _user_href(open_id: str, prefix: str) -> str:
    return f"{prefix}{quote(open_id, safe='')}"


def render_overview(view: Overview) -> str:
    """The overview page: a summary line and one row per user, linking to each user's page.

    Links are relative (``status/<open_id>`` from ``/status``), so the page works under a custom
    domain's base path too.
    """
    now = view.generated_at
    summary = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in sorted(view.states.items())) or "no users"
    rows = "".join(
        "<tr data-open-id='{oid}'><td><a href='{href}'>{name}</a><br><code>{oid}</code></td><td>{state}</td>"
        "<td>{calendars}</td><td>{success}</td><td>{attempt}</td><td>{ping}</td><td>{subscribed}</td>"
        "<td>{resets}</td><td>{failures}</td><td>{error}</td></tr>".format(
            oid=_e(u.open_id),
            href=_e(_user_href(u.open_id, "status/")),
            name=_e(u.name or u.open_id),
            state=_state_badge(u.state),
            calendars=u.calendars_mirrored,
            success=_e(_when(u.last_success_at, now)),
            attempt=_e(_when(u.last_attempt_at, now)),
            ping=_e(_when(u.last_ping_at, now)),
            subscribed=_e(_when(u.subscribed_at, now)),
            resets=u.full_resync_count,
            failures=u.consecutive_failures,
            error=_e(f"{u.last_error_code or ''} {u.last_error_message or ''}".strip() or "—"),
        )
        for u in view.users
    )
    more = ""
    if view.next_start:
        query = urlencode({"start": view.next_start, "limit": view.limit})
        more = f"<p><a rel='next' href='status?{_e(query)}'>Next {view.limit} users →</a></p>"
    body = (
        "<h1>Feishu calendar mirror — status</h1>"
        f"<p class='note'>Generated {_e(_when(now, now))}. On this page: {_e(summary)}.</p>"
        "<table><thead><tr><th>User</th><th>State</th><th>Calendars</th><th>Last success</th><th>Last attempt</th>"
        "<th>Last ping</th><th>Subscribed</th><th>Full resyncs</th><th>Failures</th><th>Last error</th></tr></thead>"
        f"<tbody>{rows or '<tr><td colspan=10>No users yet: send someone to /oauth/start.</td></tr>'}</tbody></table>"
        f"{more}"
    )
    return _document("Calendar mirror status", body, refresh_to="")


def _events_cells(events: Mapping[str, Any] | None, now: int) -> str:
    """The events count (with held deletions) and when they were last listed; dashes when not mirrored."""
    if not events:
        return "<td class='events'>—</td><td>—</td>"
    held = events.get("held_sweep")
    count = str(events.get("events_mirrored", 0))
    if isinstance(held, Mapping) and held.get("count"):
        count += f" ({held['count']} deletions held)"
    if events.get("events_reduced"):
        count += f" ({events['events_reduced']} reduced)"
    return f"<td class='events'>{_e(count)}</td><td>{_e(_when(events.get('synced_at'), now))}</td>"


def _held(u: UserHealth, now: int) -> str:
    if not u.held_deletions:
        return "none"
    return f"{u.held_deletions} since {_e(_when(u.held_since, now))}" if u.held_since else str(u.held_deletions)


@dataclass(frozen=True, slots=True)
class Upcoming:
    """The user's coming days for the page: each occurrence's time as people read it (local date and
    time in its zone), its summary and whether it belongs to a recurring event; or why there is none."""

    rows: tuple[tuple[str, str, bool], ...] = ()
    note: str = ""


def _upcoming(upcoming: Upcoming) -> str:
    if upcoming.note:
        return f"<p class='note'>{_e(upcoming.note)}</p>"
    if not upcoming.rows:
        return "<p class='note'>Nothing in the next seven days.</p>"
    rows = "".join(
        f"<tr><td>{_e(when)}</td><td>{_e(summary)}</td><td>{'↻ recurring' if recurring else ''}</td></tr>"
        for when, summary, recurring in upcoming.rows
    )
    return f"<table id='upcoming'><thead><tr><th>When</th><th>Event</th><th></th></tr></thead><tbody>{rows}</tbody></table>"


def render_user(view: UserDetail, *, flash: str = "", upcoming: Upcoming | None = None) -> str:
    """One user's page: health, a resync button, the coming week (when given), and the live calendars."""
    u, now = view.health, view.generated_at
    facts: Iterable[tuple[str, str]] = (
        ("State", _state_badge(u.state)),
        ("Status", _e(u.status)),
        (
            "Re-authorisation needed",
            "yes, since " + _e(_when(u.reauth_required_at, now)) if u.reauth_required else "no",
        ),
        ("Why", _e(u.reauth_cause.replace("_", " ")) if u.reauth_required and u.reauth_cause else "—"),
        ("Missing scope", _e(u.missing_scope) if u.reauth_required and u.missing_scope else "—"),
        ("Calendars mirrored", str(u.calendars_mirrored)),
        ("Last success", _e(_when(u.last_success_at, now))),
        ("Last attempt", _e(_when(u.last_attempt_at, now))),
        ("Last ping (push or operator resync)", _e(_when(u.last_ping_at, now))),
        ("Oldest ping not yet in the mirror", _e(_when(u.pending_ping_at, now)) if u.pending_ping_at else "none"),
        ("Last listing", _e(u.last_sync_kind or "—")),
        ("Subscribed to changes", _e(_when(u.subscribed_at, now))),
        ("Full resyncs (sync token expired)", str(u.full_resync_count)),
        ("Consecutive failures", str(u.consecutive_failures)),
        ("Last error", _e(f"{u.last_error_code or ''} {u.last_error_message or ''}".strip() or "—")),
        ("Held deletions (calendars and events)", _held(u, now)),
        ("Items stored reduced (fields DynamoDB cannot hold, see mirror_reduced)", str(u.items_reduced)),
        ("Sync running", "yes" if u.syncing else "no"),
        ("Next due", _e(_when(u.due_at, now))),
        ("Authorised", _e(_when(u.authorized_at, now))),
        ("Refresh token expires", _e(_when(u.refresh_expires_at, now))),
        ("Tombstones kept", str(view.tombstones)),
    )
    columns = [name for name in CALENDAR_FIELDS if any(name in c.fields for c in view.calendars)]
    head = "".join(f"<th>{_e(name)}</th>" for name in columns) + "<th>events</th><th>events listed</th>"
    rows = "".join(
        f"<tr data-calendar-id='{_e(c.calendar_id)}'>"
        + "".join(f"<td>{_e(_cell(c.fields.get(name, '')))}</td>" for name in columns)
        + _events_cells(c.events, now)
        + f"<td><code>{_e(c.calendar_id)}</code></td></tr>"
        for c in view.calendars
    )
    action = (
        "<p class='note'>This user must sign in again through /oauth/start before anything syncs.</p>"
        if u.reauth_required
        else f"<form method='post' action='{_e(_user_href(u.open_id, ''))}/resync'>"
        "<button type='submit' id='resync'>Resync now</button></form>"
    )
    body = (
        "<p><a href='../status'>← all users</a></p>"
        f"<h1>{_e(u.name or u.open_id)}</h1><p><code>{_e(u.open_id)}</code></p>"
        + (f"<p class='flash' role='status'>{_e(flash)}</p>" if flash else "")
        + "<dl>"
        + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts)
        + f"</dl>{action}"
        + (f"<h2>Next seven days</h2>{_upcoming(upcoming)}" if upcoming is not None else "")
        + f"<h2>Calendars ({len(view.calendars)} live)</h2>"
        + f"<table id='calendars'><thead><tr>{head}<th>calendar_id</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    # Reload the user's page itself, not a "?resync=" answer (whose message would linger).
    return _document(f"{u.name or u.open_id} — calendar mirror", body, refresh_to=_user_href(u.open_id, ""))


def render_message(title: str, message: str, *, overview: str = "status") -> str:
    """A page with one sentence (errors), linking back to the overview at the relative ``overview``
    (see ``overview_href``; an absolute ``/status`` would miss a custom domain's base path)."""
    return _document(title, f"<h1>{_e(title)}</h1><p>{_e(message)}</p><p><a href='{_e(overview)}'>All users</a></p>")
