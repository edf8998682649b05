"""Agenda function: the read routes for consumers (IAM-protected in the template), JSON only.

``GET /v1/users/{open_id}/calendars`` (the user's live calendars), ``GET /v1/users/{open_id}/agenda
?from=&to=[&tz=]`` (every occurrence overlapping the window, recurring events expanded) and
``GET /v1/freebusy?open_ids=&from=&to=[&tz=]`` (each user's merged busy intervals). Served from
DynamoDB alone (``feishu_mirror.agenda``; ``feishu_mirror.agenda_http`` reads the parameters and writes
the JSON); a bad request is a 4xx with ``error`` and ``message``.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from feishu_mirror import agenda, agenda_http, composition
from feishu_mirror.config import Settings
from feishu_mirror.observability import logger, metrics

settings = Settings.from_env("USERS_TABLE", "CALENDARS_TABLE", "EVENTS_TABLE")
tracer = Tracer()
app = APIGatewayHttpResolver()
JSON_TYPE = "application/json"
HEADERS = {"Cache-Control": "no-store"}


def service() -> agenda.AgendaService:
    """The read side, built on first use."""
    return composition.for_lambda(settings).agenda


def _query() -> dict[str, str]:
    return app.current_event.query_string_parameters or {}


def _json(code: int, body: dict[str, Any]) -> Response[Any]:
    return Response(code, JSON_TYPE, body, headers=HEADERS)


@app.get("/v1/users/<open_id>/calendars")
def calendars(open_id: str) -> Response[Any]:
    """The user's live calendars."""
    return _json(200, agenda_http.calendars_json(service().calendars(open_id)))


@app.get("/v1/users/<open_id>/agenda")
def user_agenda(open_id: str) -> Response[Any]:
    """Every occurrence on the user's readable calendars overlapping ``[from, to)``."""
    query = _query()
    window = agenda_http.parse_window(query.get("from"), query.get("to"))
    tz = agenda_http.time_zone(query.get("tz"))
    found = service().agenda(open_id, window)
    logger.info("agenda_read", extra={"open_id": open_id, "occurrences": len(found.entries)})
    return _json(200, agenda_http.agenda_json(found, tz))


@app.get("/v1/freebusy")
def freebusy() -> Response[Any]:
    """Each user's merged busy intervals in ``[from, to)``."""
    query = _query()
    open_ids = agenda_http.open_id_list(query.get("open_ids"))
    window = agenda_http.parse_window(query.get("from"), query.get("to"))
    tz = agenda_http.time_zone(query.get("tz"))
    users = service().freebusy(open_ids, window)
    return _json(200, agenda_http.freebusy_json(window, users, tz))


@app.exception_handler(agenda.AgendaError)
def refused(exc: agenda.AgendaError) -> Response[Any]:
    """A request the read side cannot answer: its status, a code and a sentence."""
    return _json(exc.status, {"error": exc.code, "message": str(exc)})


@app.not_found
def not_found(_exc: Exception) -> Response[Any]:
    """Unknown path."""
    return _json(404, {"error": "not_found", "message": "There is nothing here."})


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0) handler."""
    return app.resolve(event, context)
