"""The status pages: the status service's views rendered as small self-contained HTML pages.

Every value is escaped; the pages carry no script at all (``CONTENT_SECURITY_POLICY``: inline style,
forms to this origin only), reload themselves every ``AUTO_REFRESH_SECONDS``, and link relatively, so
they work under a custom domain's base path and behind a signing proxy.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from feishu_mirror.agenda import human_span
from feishu_mirror.health import UserHealth
from feishu_mirror.models import CALENDAR_FIELDS
from feishu_mirror.status import ComingWeek, Overview, UserDetail

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


def _coming_week(week: ComingWeek) -> str:
    """The occurrences as people read them (local date and time in the event's zone), or the note."""
    if week.note:
        return f"<p class='note'>{_e(week.note)}</p>"
    if not week.entries:
        return "<p class='note'>Nothing in the next seven days.</p>"
    rows = "".join(
        f"<tr><td>{_e(human_span(e.start, e.end))}</td><td>{_e(e.fields.get('summary') or '')}</td>"
        f"<td>{'↻ recurring' if e.recurring_event_id else ''}</td></tr>"
        for e in week.entries
    )
    return f"<table id='upcoming'><thead><tr><th>When</th><th>Event</th><th></th></tr></thead><tbody>{rows}</tbody></table>"


def render_user(view: UserDetail, *, flash: str = "", coming_week: ComingWeek | None = None) -> str:
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
        + (f"<h2>Next seven days</h2>{_coming_week(coming_week)}" if coming_week is not None else "")
        + f"<h2>Calendars ({len(view.calendars)} live)</h2>"
        + f"<table id='calendars'><thead><tr>{head}<th>calendar_id</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    # Reload the user's page itself, not a "?resync=" answer (whose message would linger).
    return _document(f"{u.name or u.open_id} — calendar mirror", body, refresh_to=_user_href(u.open_id, ""))


def render_message(title: str, message: str, *, overview: str = "status") -> str:
    """A page with one sentence (errors), linking back to the overview at the relative ``overview``
    (see ``overview_href``; an absolute ``/status`` would miss a custom domain's base path)."""
    return _document(title, f"<h1>{_e(title)}</h1><p>{_e(message)}</p><p><a href='{_e(overview)}'>All users</a></p>")
