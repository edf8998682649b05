"""Status function: the operator's pages and resync route (IAM-protected in the template).

``GET /status`` (every user, paginated), ``GET /status/{open_id}`` (one user with their live
calendars) and ``POST /status/{open_id}/resync`` (start a sync now). HTML for a browser, JSON for
``Accept: application/json`` (or ``?format=json``). Never shows a token or a sync token: the reads
project an allow-list (see ``feishu_mirror.status``). The service returns data; ``status_http`` reads
the request (negotiation, parameters, origin) and ``status_pages`` renders the HTML.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from aws_lambda_powertools import Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from feishu_mirror import agenda, agenda_http, composition, status, status_http, status_pages
from feishu_mirror.config import Settings
from feishu_mirror.errors import UnknownUser
from feishu_mirror.observability import logger, metrics

settings = Settings.from_env("USERS_TABLE", "CALENDARS_TABLE", "SYNC_FUNCTION_NAME")
tracer = Tracer()
app = APIGatewayHttpResolver()
JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
MAX_COMING_ENTRIES = 200  # occurrences of the coming week on one user's page
HTML_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": status_pages.CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on the page's own
    # resync post, which cross_site must refuse; nothing is ever sent to another origin either way.
    "Referrer-Policy": "same-origin",
}


def service() -> status.StatusService:
    """The status service, built on first use."""
    return composition.for_lambda(settings).status


def _json_wanted() -> bool:
    event = app.current_event
    return status_http.wants_json(event.headers.get("accept"), (event.query_string_parameters or {}).get("format"))


def _reply(code: int, data: dict[str, Any], page: str) -> Response[Any]:
    """JSON or HTML, whichever the client asked for."""
    if _json_wanted():
        return Response(code, JSON_TYPE, data, headers={"Cache-Control": "no-store"})
    return Response(code, HTML_TYPE, page, headers=HTML_HEADERS)


def _error(code: int, title: str, message: str) -> Response[Any]:
    overview = status_http.overview_href(app.current_event.raw_event.get("rawPath") or "")
    return _reply(code, {"message": message}, status_pages.render_message(title, message, overview=overview))


@app.get("/status")
def overview() -> Response[Any]:
    """Every user's health, one page at a time (``?limit=``, ``?start=``)."""
    query = app.current_event.query_string_parameters or {}
    view = service().overview(limit=status_http.page_size(query.get("limit")), start=query.get("start") or None)
    return _reply(200, view.as_dict(), status_pages.render_overview(view))


def _coming_week(open_id: str) -> status.ComingWeek:
    """The user's next seven days from the agenda index (at most ``MAX_COMING_ENTRIES``), or why not."""
    if not settings.events_table:
        return status.ComingWeek(note="Events are not mirrored.")
    try:
        week = agenda.Window.days_from(int(time.time()), 7)
        entries = composition.for_lambda(settings).agenda.agenda(open_id, week).entries
    except agenda.AgendaError as exc:
        return status.ComingWeek(note=str(exc))
    except (BotoCoreError, ClientError):  # the page still shows the user's health
        logger.exception("coming_week_unavailable", extra={"open_id": open_id})
        return status.ComingWeek(note="The coming week could not be read just now.")
    return status.ComingWeek(entries=entries[:MAX_COMING_ENTRIES])


@app.get("/status/<open_id>")
def user(open_id: str) -> Response[Any]:
    """One user's health, live calendars, tombstone count and next seven days."""
    view = service().user(open_id)
    week = _coming_week(open_id)
    outcome = (app.current_event.query_string_parameters or {}).get("resync", "")
    page = status_pages.render_user(view, flash=status.RESYNC_MESSAGES.get(outcome, ""), coming_week=week)
    entries = [agenda_http.entry_json(entry) for entry in week.entries]  # as the agenda route gives them
    return _reply(200, {**view.as_dict(), "next_seven_days": entries}, page)


@app.post("/status/<open_id>/resync")
def resync(open_id: str) -> Response[Any]:
    """Start the user's sync now; a browser's form post is redirected back to the user's page."""
    event = app.current_event
    if status_http.cross_site({str(name).lower(): str(value) for name, value in event.headers.items()}):
        logger.warning("cross_site_resync_refused", extra={"open_id": open_id})
        return _error(403, "Refused", "Cross-origin requests cannot start a sync.")
    caller = (event.raw_event.get("requestContext") or {}).get("authorizer", {}).get("iam", {}).get("userArn", "")
    requested = service().resync(open_id, requested_by=str(caller))
    if requested.outcome == "invoke_failed":
        return _error(503, "Not started", requested.message)
    if _json_wanted():
        return Response(202, JSON_TYPE, requested.as_dict(), headers={"Cache-Control": "no-store"})
    # Post/Redirect/Get: relative to /status/<id>/resync, "../<id>" is the user's page.
    location = f"../{quote(open_id, safe='')}?resync={requested.outcome}"
    return Response(303, "text/plain", "", headers={"Location": location, "Cache-Control": "no-store"})


@app.exception_handler(UnknownUser)
def unknown_user(_exc: UnknownUser) -> Response[Any]:
    """No such user."""
    return _error(404, "Unknown user", "No user with this open_id has authorised the mirror.")


@app.exception_handler(status.ReauthorizationPending)
def reauth_pending(_exc: status.ReauthorizationPending) -> Response[Any]:
    """Nothing can sync until the user consents again."""
    return _error(409, "Re-authorisation needed", "This user must sign in again through /oauth/start first.")


@app.exception_handler(status.StatusRequestInvalid)
def invalid(exc: status.StatusRequestInvalid) -> Response[Any]:
    """A malformed parameter."""
    return _error(400, "Bad request", str(exc))


@app.not_found
def not_found(_exc: Exception) -> Response[Any]:
    """Unknown path."""
    return _error(404, "Not found", "There is nothing here.")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0) handler."""
    return app.resolve(event, context)
