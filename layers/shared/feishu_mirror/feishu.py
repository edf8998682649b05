"""The Feishu OpenAPI client: calendar listing, change subscription, OAuth tokens and user info.

The only module that speaks HTTP. Every call goes through ``FEISHU_BASE_URL`` (the OAuth consent page
through ``FEISHU_ACCOUNTS_URL``) and first takes a slot from the ``RateGate`` of its API: Feishu limits
each API (method and path template) on its own, per app and tenant, so each has a budget. Failures are
handled by kind: 429 / 99991400 waits for ``x-ogw-ratelimit-reset``; 5xx, retryable codes and
transport errors back off with full jitter; everything else raises a typed ``FeishuError`` at once.
Success is decided by the body's ``code``, never by the HTTP status. No token is ever logged.

A token refresh is the one call that must not be repeated blindly: Feishu spends the refresh token
when it processes the request, so only a failure that certainly happened before Feishu processed it
is retried (see ``refresh_access_token``); any other failure raises ``RefreshOutcomeUnknown``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from feishu_mirror.errors import (
    AccessTokenRejected,
    AuthorizationCodeRejected,
    DeadlineExceeded,
    FeishuError,
    FeishuUnavailable,
    ReauthorizationRequired,
    RefreshOutcomeUnknown,
    ScopeMissing,
    SyncTokenExpired,
)
from feishu_mirror.identifiers import is_open_id
from feishu_mirror.models import Calendar, Event, Item, Page, TokenGrant, UserIdentity
from feishu_mirror.observability import count, logger

CALENDARS_PATH = "/open-apis/calendar/v4/calendars"
SUBSCRIPTION_PATH = "/open-apis/calendar/v4/calendars/subscription"
# Full event listings pass anchor_time: Feishu only returns a page_token when it is present.
FULL_LISTING_ANCHOR_TIME = "0"
TOKEN_PATH = "/open-apis/authen/v2/oauth/token"  # noqa: S105 - a URL path, not a secret
USER_INFO_PATH = "/open-apis/authen/v1/user_info"
AUTHORIZE_PATH = "/open-apis/authen/v1/authorize"
DEFAULT_SCOPES = ("calendar:calendar:readonly", "offline_access")
# The APIs the client calls, each named by method and path template: the unit of Feishu's rate limits.
LIST_CALENDARS_API = f"GET {CALENDARS_PATH}"
SUBSCRIBE_CALENDARS_API = f"POST {SUBSCRIPTION_PATH}"
LIST_EVENTS_API = f"GET {CALENDARS_PATH}/:calendar_id/events"
SUBSCRIBE_EVENTS_API = f"POST {CALENDARS_PATH}/:calendar_id/events/subscription"
TOKEN_API = f"POST {TOKEN_PATH}"
USER_INFO_API = f"GET {USER_INFO_PATH}"

RATE_LIMITED_CODES = frozenset({99991400})
RETRYABLE_CODES = frozenset({190003, 190004, 190005, 190010, 20050, 20072, 1500, 5000})
SYNC_TOKEN_EXPIRED = 190008
ACCESS_TOKEN_CODES = frozenset({99991661, 99991668, 99991671, 99991677})
USER_GONE_CODES = frozenset({195100})
# The permission family (the official CLI's "permission" class): the app has not enabled the scope
# (99991672), the token lacks it (99991676), the user has not granted it (99991679), the user has not
# authorised the app (230027). The body's error.permission_violations[].subject names the scopes.
SCOPE_CODES = frozenset({99991672, 99991676, 99991679, 230027})
REAUTH_CODES = frozenset({20008, 20010, 20024, 20026, 20037, 20064, 20066, 20073, 20074})
BAD_CODE_CODES = frozenset({20003, 20004, 20049, 20065, 20071})
# A refresh that failed with one of these was certainly not processed by the token service: 20050 and
# 20072 are its own "server error, retry" answers (the official clients retry 20050 with the same token).
REFRESH_RETRYABLE_CODES = frozenset({20050, 20072})


class RateGate(Protocol):
    """Grants the next request slot of one API, app-wide; waits or raises ``DeadlineExceeded``."""

    def acquire(self, api: str, deadline: float) -> None:
        """Block until a request to ``api`` may be sent; ``deadline`` is a ``time.monotonic()`` value."""


class NoRateGate:
    """A gate that never waits (unit tests, one-off scripts)."""

    def acquire(self, api: str, deadline: float) -> None:
        """Return at once."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try a transient failure before giving up."""

    max_attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    max_rate_limit_wait: float = 60.0
    connect_timeout: float = 3.05
    read_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class _Reply:
    body: dict[str, Any]
    log_id: str


def _code(body: Mapping[str, Any]) -> int:
    """Feishu's ``code`` as an int; the OAuth endpoints may send it as a string (``"0"``)."""
    raw = body.get("code", 0)
    try:
        return int(raw)
    except (TypeError, ValueError):
        return -1


def _message(body: Mapping[str, Any]) -> str:
    text = body.get("msg") or body.get("error_description") or body.get("error") or ""
    return str(text)[:300]


def _reset_seconds(headers: Mapping[str, str]) -> float:
    try:
        return max(0.0, float(headers.get("x-ogw-ratelimit-reset", "1")))
    except ValueError:
        return 1.0


def never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly never reached the server: no connection was made (refused, name
    not resolved, connect timeout). A read timeout, or a connection closed or reset once the request was
    on its way, leaves the outcome unknown."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, MaxRetryError):
        cause = cause.reason
    return isinstance(cause, NewConnectionError | ConnectTimeoutError)


def _scopes(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The scopes an error body names in ``error.permission_violations[].subject``."""
    error = body.get("error")
    violations = error.get("permission_violations") if isinstance(error, dict) else None
    if not isinstance(violations, list):
        return ()
    subjects = (v.get("subject") for v in violations if isinstance(v, dict))
    return tuple(dict.fromkeys(s[:200] for s in subjects if isinstance(s, str) and s))[:10]


class FeishuClient:
    """A small, typed client for the Feishu endpoints the mirror needs.

    ``deadline`` arguments are ``time.monotonic()`` values past which no retry or wait is started.
    """

    def __init__(
        self,
        *,
        base_url: str,
        accounts_url: str,
        app_id: str,
        app_secret: str,
        rate_gate: RateGate | None = None,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._accounts = accounts_url.rstrip("/")
        self._app_id = app_id
        self._app_secret = app_secret
        self._gate = rate_gate or NoRateGate()
        self._session = session or requests.Session()
        # A refresh goes out on a new connection, never on a pooled one the server may have closed
        # meanwhile (a reset on reuse could not be told from one after Feishu processed the request).
        self._fresh_connection_for_refresh = session is None
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._clock = clock

    # ------------------------------------------------------------------ calendar API
    def list_calendars(
        self,
        access_token: str,
        *,
        deadline: float,
        page_size: int = 1000,
        page_token: str | None = None,
        sync_token: str | None = None,
    ) -> Page[Calendar]:
        """One page of the user's calendar list (full listing, or changes since ``sync_token``).

        A follow-up page is asked for with ``page_token`` alone. Raises ``SyncTokenExpired`` (190008),
        ``AccessTokenRejected``, ``ReauthorizationRequired`` (user left), ``FeishuUnavailable`` or
        ``FeishuError``.
        """
        params: dict[str, str] = {"page_size": str(page_size)}
        if page_token:
            params["page_token"] = page_token
        elif sync_token:
            params["sync_token"] = sync_token
        reply = self._call(
            LIST_CALENDARS_API, CALENDARS_PATH, deadline=deadline, access_token=access_token, params=params
        )
        return self._page(reply, "calendar_list", Calendar.from_feishu)

    def list_events(
        self,
        access_token: str,
        calendar_id: str,
        *,
        deadline: float,
        page_size: int = 1000,
        page_token: str | None = None,
        sync_token: str | None = None,
    ) -> Page[Event]:
        """One page of a calendar's events (full listing, or changes since ``sync_token``).

        A full listing passes ``anchor_time`` (Feishu pages only then); ``start_time``/``end_time``
        are never sent, as they cannot be combined with tokens. Deleted events come back with
        ``status: cancelled``. Raises as ``list_calendars``; 191xxx (calendar gone, no access, wrong
        type) as ``FeishuError``.
        """
        params: dict[str, str] = {"page_size": str(page_size)}
        if page_token:
            params["page_token"] = page_token
        elif sync_token:
            params["sync_token"] = sync_token
        else:
            params["anchor_time"] = FULL_LISTING_ANCHOR_TIME
        path = f"{CALENDARS_PATH}/{quote(calendar_id, safe='')}/events"
        reply = self._call(LIST_EVENTS_API, path, deadline=deadline, access_token=access_token, params=params)
        return self._page(reply, "items", Event.from_feishu)

    def _page[T: Item](
        self, reply: _Reply, list_name: str, parse: Callable[[Mapping[str, Any]], tuple[T, bool]]
    ) -> Page[T]:
        """A listing response as a page; malformed entries are skipped and counted."""
        data = reply.body.get("data") or {}
        if not isinstance(data, dict):
            raise FeishuError(-1, "listing without a data object", log_id=reply.log_id)
        raw_list = data.get(list_name) or []
        if not isinstance(raw_list, list):
            raise FeishuError(-1, f"{list_name} is not a list", log_id=reply.log_id)
        entries: list[tuple[T, bool]] = []
        skipped = 0
        for raw in raw_list:
            try:
                entries.append(parse(raw if isinstance(raw, dict) else {}))
            except ValueError:
                skipped += 1
        if skipped:
            logger.warning("listing_entries_skipped", extra={"skipped": skipped, "log_id": reply.log_id})
        return Page(
            entries=tuple(entries),
            has_more=data.get("has_more") is True,
            page_token=str(data.get("page_token") or ""),
            sync_token=str(data.get("sync_token") or ""),
            log_id=reply.log_id,
            skipped_entries=skipped,
        )

    def subscribe_calendar_events(self, access_token: str, calendar_id: str, *, deadline: float) -> None:
        """Subscribe the user to ``calendar.calendar.event.changed_v4`` for one calendar."""
        path = f"{CALENDARS_PATH}/{quote(calendar_id, safe='')}/events/subscription"
        self._call(SUBSCRIBE_EVENTS_API, path, deadline=deadline, access_token=access_token, json_body={})

    def subscribe_calendar_changes(self, access_token: str, *, deadline: float) -> None:
        """Subscribe the user to ``calendar.calendar.changed_v4`` (idempotent on Feishu's side)."""
        self._call(
            SUBSCRIBE_CALENDARS_API, SUBSCRIPTION_PATH, deadline=deadline, access_token=access_token, json_body={}
        )

    # ------------------------------------------------------------------ OAuth
    def authorize_url(self, *, redirect_uri: str, state: str, code_challenge: str, scopes: tuple[str, ...]) -> str:
        """The consent page URL the user is redirected to (PKCE S256)."""
        query = urlencode(
            {
                "client_id": self._app_id,
                "response_type": "code",
                "redirect_uri": redirect_uri,
                "scope": " ".join(scopes),
                "state": state,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{self._accounts}{AUTHORIZE_PATH}?{query}"

    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str, deadline: float) -> TokenGrant:
        """Trade an authorization code for tokens; raises ``AuthorizationCodeRejected`` for a bad code."""
        body = {
            "grant_type": "authorization_code",
            "client_id": self._app_id,
            "client_secret": self._app_secret,
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        return self._grant(self._call(TOKEN_API, TOKEN_PATH, deadline=deadline, json_body=body))

    def refresh_access_token(self, refresh_token: str, *, deadline: float) -> TokenGrant:
        """Rotate the token pair. The old refresh token is dead as soon as Feishu processes the request.

        Retried only where Feishu certainly did not process it: no connection made, 429, a bare 503, or
        an answer of the token service itself with HTTP 5xx or code 20050/20072 (``FeishuUnavailable``
        when those run out). Every other code means the refresh token is gone, as the official clients
        treat it: ``ReauthorizationRequired``. Anything else — a read timeout, a connection closed after
        sending, a gateway's 500/502/504 without Feishu's body, a 200 without a token — raises
        ``RefreshOutcomeUnknown``: the token may be spent and must not be sent again.
        """
        body = {
            "grant_type": "refresh_token",
            "client_id": self._app_id,
            "client_secret": self._app_secret,
            "refresh_token": refresh_token,
        }
        session = requests.Session() if self._fresh_connection_for_refresh else None
        try:
            reply = self._call(TOKEN_API, TOKEN_PATH, deadline=deadline, json_body=body, session=session, replay=False)
        except (FeishuUnavailable, ReauthorizationRequired):
            raise
        except FeishuError as exc:
            raise ReauthorizationRequired(exc.code, exc.message, http_status=exc.http_status) from exc
        finally:
            if session is not None:
                session.close()
        try:
            return self._grant(reply)
        except FeishuError as exc:
            raise RefreshOutcomeUnknown(exc.code, exc.message, log_id=exc.log_id) from exc

    def get_user_info(self, access_token: str, *, deadline: float) -> UserIdentity:
        """Who the access token belongs to."""
        reply = self._call(USER_INFO_API, USER_INFO_PATH, deadline=deadline, access_token=access_token)
        data = reply.body.get("data") or {}
        open_id = data.get("open_id") if isinstance(data, dict) else None
        if not is_open_id(open_id):  # the mirror keys everything by it: one rule at every door
            raise FeishuError(-1, "user_info without a valid open_id", log_id=reply.log_id)
        return UserIdentity(open_id=open_id, name=str(data.get("name") or ""), union_id=str(data.get("union_id") or ""))

    def _grant(self, reply: _Reply) -> TokenGrant:
        body = reply.body
        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise FeishuError(-1, "token response without an access_token", log_id=reply.log_id)
        now = int(self._clock())
        refresh_token = body.get("refresh_token") or None
        refresh_in = body.get("refresh_token_expires_in")
        return TokenGrant(
            access_token=access_token,
            access_expires_at=now + int(body.get("expires_in") or 7200),
            refresh_token=str(refresh_token) if refresh_token else None,
            refresh_expires_at=now + int(refresh_in) if refresh_token and refresh_in else None,
            scope=str(body.get("scope") or ""),
        )

    # ------------------------------------------------------------------ transport
    def _call(
        self,
        api: str,
        path: str,
        *,
        deadline: float,
        access_token: str | None = None,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        session: requests.Session | None = None,
        replay: bool = True,
    ) -> _Reply:
        """One request to ``api`` (its method comes first in the name) at ``path``, with the retries its
        failures allow. ``replay=False`` (a refresh): a failure after which Feishu may have processed the
        request raises ``RefreshOutcomeUnknown`` instead."""
        method = api.split(" ", 1)[0]
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if access_token is not None:
            headers["Authorization"] = f"Bearer {access_token}"
        attempts = 0
        waited_for_rate = 0.0
        while True:
            attempts += 1
            self._gate.acquire(api, deadline)
            timeout = self._timeout(deadline)
            try:
                response = (session or self._session).request(
                    method, self._base + path, params=params, json=json_body, headers=headers, timeout=timeout
                )
            except requests.RequestException as exc:
                failure = f"transport error ({type(exc).__name__})"
                logger.warning("feishu_transport_error", extra={"path": path, "error": type(exc).__name__})
                if not replay and not never_sent(exc):
                    raise RefreshOutcomeUnknown(-1, failure) from exc
                delay = self._backoff(attempts, message=failure, deadline=deadline)
                self._sleep(delay)
                continue
            log_id = response.headers.get("x-tt-logid", "")
            body = self._json(response)
            code = _code(body) if body is not None else -1
            if body is not None and code == 0 and response.status_code < 400:
                logger.info("feishu_call", extra={"path": path, "status": response.status_code, "log_id": log_id})
                return _Reply(body, log_id)
            message = _message(body or {}) or f"HTTP {response.status_code}"
            logger.info(
                "feishu_call_failed",
                extra={"path": path, "status": response.status_code, "code": code, "log_id": log_id},
            )
            if not replay and body is None and response.status_code not in (429, 503):
                # Not the token service's answer but a gateway's page (or an unreadable 200): the request
                # may have been processed behind it. 429 and 503 say it was not handled (RFC 9110).
                raise RefreshOutcomeUnknown(-1, message, http_status=response.status_code, log_id=log_id)
            if response.status_code == 429 or code in RATE_LIMITED_CODES:
                wait = _reset_seconds(response.headers)
                waited_for_rate += wait
                count("FeishuRateLimitWaits")
                if waited_for_rate > self._retry.max_rate_limit_wait or self._monotonic() + wait >= deadline:
                    raise FeishuUnavailable(code, "rate limited", http_status=response.status_code, log_id=log_id)
                self._sleep(wait + random.uniform(0, 0.25))  # noqa: S311 - jitter, not crypto
                attempts -= 1  # waiting out the limit is not a failed attempt
                continue
            if response.status_code >= 500 or code in (RETRYABLE_CODES if replay else REFRESH_RETRYABLE_CODES):
                self._sleep(
                    self._backoff(
                        attempts,
                        message=message,
                        deadline=deadline,
                        code=code,
                        http_status=response.status_code,
                        log_id=log_id,
                    )
                )
                continue
            raise self._error(code, message, response.status_code, log_id, body or {})

    def _timeout(self, deadline: float) -> tuple[float, float]:
        remaining = deadline - self._monotonic()
        if remaining <= 0.5:
            raise DeadlineExceeded("no time left for a Feishu call")
        return (min(self._retry.connect_timeout, remaining), min(self._retry.read_timeout, remaining))

    def _backoff(
        self,
        attempts: int,
        *,
        message: str,
        deadline: float,
        code: int = -1,
        http_status: int | None = None,
        log_id: str = "",
    ) -> float:
        if attempts >= self._retry.max_attempts:
            raise FeishuUnavailable(code, message, http_status=http_status, log_id=log_id)
        delay = random.uniform(0, min(self._retry.max_delay, self._retry.base_delay * 2**attempts))  # noqa: S311
        if self._monotonic() + delay >= deadline:
            raise FeishuUnavailable(code, message, http_status=http_status, log_id=log_id)
        count("FeishuRetries")
        return delay

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any] | None:
        """The JSON body, numbers exact: a number with a fraction or exponent becomes the ``Decimal`` of
        its text (never a ``float``, which DynamoDB refuses and which rounds), and so do NaN and the
        infinities (which ``storable`` then keeps out of DynamoDB)."""
        try:
            body = json.loads(response.content.decode("utf-8"), parse_float=Decimal, parse_constant=Decimal)
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested beyond the parser
            return None
        return body if isinstance(body, dict) else None

    @staticmethod
    def _error(code: int, message: str, http_status: int, log_id: str, body: Mapping[str, Any]) -> FeishuError:
        if code in SCOPE_CODES:
            return ScopeMissing(code, message, scopes=_scopes(body), http_status=http_status, log_id=log_id)
        if code in USER_GONE_CODES:
            return ReauthorizationRequired(
                code, message, cause="user_left_tenant", http_status=http_status, log_id=log_id
            )
        kind: type[FeishuError] = FeishuError
        if code == SYNC_TOKEN_EXPIRED:
            kind = SyncTokenExpired
        elif code in ACCESS_TOKEN_CODES:
            kind = AccessTokenRejected
        elif code in REAUTH_CODES:
            kind = ReauthorizationRequired
        elif code in BAD_CODE_CODES:
            kind = AuthorizationCodeRejected
        return kind(code, message, http_status=http_status, log_id=log_id)
