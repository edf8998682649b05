"""OAuth function: ``GET /oauth/start`` redirects to Feishu's consent page, ``GET /oauth/callback`` finishes.

Answers are small HTML pages for a person in a browser; every failure is a page with a 4xx (or
502/503 when Feishu itself fails) and a sentence saying what to do.
"""

from __future__ import annotations

import html
import time
from typing import Any

from aws_lambda_powertools import Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from feishu_mirror import composition
from feishu_mirror.config import FeishuCredentials, Settings, load_credentials
from feishu_mirror.errors import ConfigError, OnboardingError
from feishu_mirror.observability import logger, metrics
from feishu_mirror.onboarding import Onboarding, redirect_uri

settings = Settings.from_env(
    "USERS_TABLE", "OAUTH_STATE_TABLE", "RATE_LIMIT_TABLE", "SYNC_FUNCTION_NAME", "TOKEN_KEY_ID"
)
tracer = Tracer()
app = APIGatewayHttpResolver()
SAFETY_SECONDS = 2


def onboarding(credentials: FeishuCredentials) -> Onboarding:
    """The onboarding flow for one credential set."""
    return composition.for_lambda(settings, credentials).onboarding


def page(status: int, title: str, message: str) -> Response[str]:
    """A minimal HTML page (all text escaped)."""
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body style='font-family:sans-serif;max-width:40em;margin:3em auto'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
    )
    return Response(status, "text/html; charset=utf-8", body, headers={"Cache-Control": "no-store"})


@app.get("/oauth/start")
def start() -> Response[str]:
    """Redirect the browser to Feishu's consent page."""
    event = app.current_event
    callback_uri = redirect_uri(event.headers, event.request_context.domain_name, settings.public_base_url)
    location = onboarding(load_credentials(settings)).start(callback_uri)
    return Response(302, "text/plain", "", headers={"Location": location, "Cache-Control": "no-store"})


@app.get("/oauth/callback")
def callback() -> Response[str]:
    """Finish onboarding and tell the person what happens next."""
    query = app.current_event.query_string_parameters or {}
    remaining = app.lambda_context.get_remaining_time_in_millis() / 1000
    identity = onboarding(load_credentials(settings)).complete(
        code=query.get("code"),
        state=query.get("state"),
        error=query.get("error"),
        deadline=time.monotonic() + remaining - SAFETY_SECONDS,
    )
    who = identity.name or "your account"
    return page(200, "Calendars connected", f"Connected {who}. Your Feishu calendars are being mirrored now.")


@app.exception_handler(OnboardingError)
def onboarding_failed(exc: OnboardingError) -> Response[str]:
    """Tell the person what went wrong, without internals."""
    logger.info("onboarding_failed", extra={"status": exc.status, "reason": exc.reason})
    return page(exc.status, "Could not connect your calendars", exc.reason)


@app.exception_handler(ConfigError)
def misconfigured(exc: ConfigError) -> Response[str]:
    """A deployment problem: say so without details."""
    logger.error("configuration_error", extra={"error": str(exc)})
    return page(503, "Not configured", "This service is not configured yet. Please tell its operator.")


@app.not_found
def not_found(_exc: Exception) -> Response[str]:
    """Unknown path."""
    return page(404, "Not found", "There is nothing here.")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0) handler."""
    return app.resolve(event, context)
