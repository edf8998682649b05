"""A Feishu (Lark) Open Platform simulator that speaks the real wire format over HTTP.

One origin serves the OpenAPI paths (tenant token, OAuth token, user info, calendar list, change
subscription) and the accounts paths (the OAuth consent page), so the app can point both
`FEISHU_BASE_URL` and `FEISHU_ACCOUNTS_URL` at it. Tokens carry the scopes granted with them: a user
token without a calendar scope gets 99991679 with `error.permission_violations`, as Feishu answers. The world (users, calendars, tokens) is driven
in-process from tests or over a small JSON admin API under `/_sim/`. Calendar changes are pushed to
a callback URL as encrypted, signed `calendar.calendar.changed_v4` events, with Feishu-style retries.

Events hold whatever fields a test gives them (floats, `Decimal` numbers of any length, deep or huge
values), served as real JSON text (`json_bytes`). Recurring events are modelled as Feishu does:
a master `<uid>_0` with a `recurrence`, exceptions `<uid>_<original start>` (`create_exception`);
deleting an exception cancels that occurrence, deleting a master deletes its exceptions too.

The clock, monotonic clock and sleep it answers by are injectable, and `session()` is a
`requests.Session` that answers in-process without HTTP: so the simulator can run in virtual time
(`local.virtual_time`) with Feishu's answer times and rate limits. A calendar can be shared, the same
calendar and events in several users' lists (`share_calendar`: an org-wide calendar), and a
calendar's events can be generated on demand from an `EventSource` (`add_generated_events`), so a
world of millions of events costs memory only for the events that changed.

Run standalone: `python -m local.feishu_sim --port 8089`.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import copy
import hashlib
import json
import math
import os
import random
import re
import secrets
import signal
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Literal, Protocol, override
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import requests
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from requests.structures import CaseInsensitiveDict

TENANT_TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
AUTHORIZE_PATH = "/open-apis/authen/v1/authorize"
OAUTH_TOKEN_PATH = "/open-apis/authen/v2/oauth/token"
USER_INFO_PATH = "/open-apis/authen/v1/user_info"
CALENDARS_PATH = "/open-apis/calendar/v4/calendars"
SUBSCRIPTION_PATH = "/open-apis/calendar/v4/calendars/subscription"
UNSUBSCRIPTION_PATH = "/open-apis/calendar/v4/calendars/unsubscription"
ADMIN_PREFIX = "/_sim/"

CALENDAR_CHANGED_EVENT = "calendar.calendar.changed_v4"
EVENT_CHANGED_EVENT = "calendar.calendar.event.changed_v4"
EVENTS_PATH = re.compile(r"/open-apis/calendar/v4/calendars/([^/]+)/events(/subscription|/unsubscription)?")
EVENT_SYNCABLE_TYPES = frozenset({"primary", "shared", "resource"})
EVENT_FIELD_DEFAULTS: dict[str, Any] = {
    "summary": "",
    "description": "",
    "start_time": {"timestamp": "1767225600", "timezone": "Asia/Shanghai"},
    "end_time": {"timestamp": "1767229200", "timezone": "Asia/Shanghai"},
    "status": "confirmed",
    "visibility": "default",
    "free_busy_status": "busy",
    "color": -1,
    "recurrence": "",
    "is_exception": False,
    "recurring_event_id": "",
    "location": {"name": ""},
}
DEFAULT_SCOPE = "auth:user.id:read calendar:calendar:readonly offline_access"
# The scopes a user token needs (any one of them) for the calendar list and subscription, and for events.
CALENDAR_SCOPES = ("calendar:calendar:readonly", "calendar:calendar", "calendar:calendar:read")
EVENT_SCOPES = ("calendar:calendar:readonly", "calendar:calendar", "calendar:calendar.event:read")
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"

CALENDAR_FIELD_DEFAULTS: dict[str, Any] = {
    "summary": "",
    "description": "",
    "permissions": "private",
    "color": -1,
    "type": "shared",
    "summary_alias": "",
    "is_third_party": False,
    "role": "owner",
}
_ALLOWED_VALUES: dict[str, frozenset[str]] = {
    "permissions": frozenset({"private", "show_only_free_busy", "public"}),
    "type": frozenset({"unknown", "primary", "shared", "google", "resource", "exchange"}),
    "role": frozenset({"unknown", "free_busy_reader", "reader", "writer", "owner"}),
}

PAGE_SIZE_DEFAULT = 500
MAX_PAGE_TOKENS = 5_000
PAGE_SIZE_MIN = 50
PAGE_SIZE_MAX = 1000

_OAUTH_ERROR_NAMES: dict[int, str] = {
    20001: "invalid_request",
    20002: "invalid_client",
    20036: "unsupported_grant_type",
    20048: "invalid_client",
    20050: "server_error",
    20063: "invalid_request",
    20067: "invalid_scope",
    20068: "invalid_scope",
    20072: "temporarily_unavailable",
}
_DEFAULT_HTTP_STATUS: dict[int, int] = {
    20050: 500,
    20072: 503,
    99991400: 429,
    190003: 500,
    190004: 429,
    190005: 429,
    190010: 429,
    190007: 404,
    191000: 404,
    195100: 404,
}


# ---------------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, consumed by the next request whose path matches."""

    kind: Literal[
        "http_error",
        "feishu_error",
        "rate_limited",
        "delay",
        "drop",
        "empty_page",
        "lost_reply",
        "late_reply",
        "gateway_timeout",
        "unrotated_refresh",
    ]
    status: int = 500
    code: int | None = None
    msg: str = ""
    seconds: float = 0.0
    scopes: tuple[str, ...] = ()  # named in error.permission_violations


def http_error(status: int = 500, code: int | None = None) -> Fault:
    """A bare HTTP error; with `code` a JSON Feishu body, without one a non-JSON gateway page."""
    return Fault("http_error", status=status, code=code, msg="internal error")


def feishu_error(
    code: int, http_status: int | None = None, msg: str = "simulated error", *, scopes: tuple[str, ...] = ()
) -> Fault:
    """A Feishu error body `{code, msg}` (OAuth-shaped on the OAuth token path); with `scopes`, the body's
    `error.permission_violations` names them, as Feishu's missing-scope answers (99991672/76/79) do."""
    status = http_status if http_status is not None else _DEFAULT_HTTP_STATUS.get(code, 400)
    return Fault("feishu_error", status=status, code=code, msg=msg, scopes=scopes)


def scope_missing(code: int = 99991679, scopes: tuple[str, ...] = CALENDAR_SCOPES[:1]) -> Fault:
    """Feishu's answer to a token without the scope a call needs (99991679 user, 99991672 app, 99991676)."""
    return feishu_error(
        code, 400, "Unauthorized. You do not have permission to perform the requested operation", scopes=scopes
    )


def lost_reply() -> Fault:
    """Process the request (a refresh spends its token), then close the connection without an answer."""
    return Fault("lost_reply")


def late_reply(seconds: float) -> Fault:
    """Process the request at once, answer only after `seconds` (past the client's read timeout)."""
    return Fault("late_reply", seconds=seconds)


def gateway_timeout() -> Fault:
    """Process the request, then answer a gateway's bare 504 page instead of Feishu's answer."""
    return Fault("gateway_timeout", status=504)


def unrotated_refresh() -> Fault:
    """On a refresh: answer a new access token without a `refresh_token`; the presented one stays valid."""
    return Fault("unrotated_refresh")


def rate_limited(reset_seconds: int = 1) -> Fault:
    """A 429 / 99991400 answer carrying `x-ogw-ratelimit-reset: reset_seconds`."""
    return Fault("rate_limited", status=429, code=99991400, seconds=float(reset_seconds))


def delay(seconds: float) -> Fault:
    """Wait `seconds`, then answer normally."""
    return Fault("delay", seconds=seconds)


def empty_page() -> Fault:
    """On a listing (the calendar list, a calendar's events): an empty page with ``has_more: true`` that
    continues where the listing stands (a page_token; for an event increment, as it pages, a sync_token)."""
    return Fault("empty_page")


def drop() -> Fault:
    """Close the connection without sending any answer."""
    return Fault("drop")


# ---------------------------------------------------------------------------------------------
# Observation records


@dataclass(frozen=True)
class RequestRecord:
    """One request the simulator answered (admin `/_sim/` requests are not recorded)."""

    time: float
    method: str
    path: str
    query: dict[str, str]
    status: int | None  # None when the connection was dropped
    code: int | None  # the Feishu `code` of a JSON answer
    token_kind: Literal["tenant", "user", "unknown"] | None  # kind of the bearer token presented
    open_id: str | None  # the user of a user access token
    fault: str | None  # the injected fault kind, or "rate_limit" for a real 429
    api: str = ""  # method and path template (see api_name): the unit of Feishu's rate limits


@dataclass(frozen=True)
class Delivery:
    """One attempt to push an event to the callback URL; ``delivery_id`` is its ``header.event_id``."""

    delivery_id: str
    event_type: str
    open_ids: tuple[str, ...]
    attempt: int  # 1 for the first delivery, 2.. for retries
    status: int | None  # HTTP status answered, None on transport error / timeout
    error: str | None
    time: float
    url: str


# ---------------------------------------------------------------------------------------------
# Crypto (Feishu event encryption and signature)


def encrypt_event(encrypt_key: str, plaintext: bytes) -> str:
    """Encrypt like Feishu: base64(iv || AES-256-CBC(sha256(key), iv, pkcs7(plaintext)))."""
    key = hashlib.sha256(encrypt_key.encode("utf-8")).digest()
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode("ascii")


def event_signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """Feishu's `X-Lark-Signature`: hex sha256(utf8(timestamp + nonce + encrypt_key) + body)."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode("utf-8") + body).hexdigest()


# ---------------------------------------------------------------------------------------------
# Internal state


@dataclass
class _CalendarState:
    calendar_id: str
    fields: dict[str, Any]
    changed_seq: int
    deleted: bool = False
    events: _EventBook = field(default_factory=lambda: _EventBook(""))
    events_subscribed: bool = False

    def entry(self) -> dict[str, Any]:
        """The calendar as the list API returns it."""
        f = self.fields
        return {
            "calendar_id": self.calendar_id,
            "summary": f["summary"],
            "description": f["description"],
            "permissions": f["permissions"],
            "color": f["color"],
            "type": f["type"],
            "summary_alias": f["summary_alias"],
            "is_deleted": self.deleted,
            "is_third_party": f["is_third_party"],
            "role": f["role"],
        }


@dataclass
class _EventState:
    event_id: str
    calendar_id: str
    fields: dict[str, Any]
    changed_seq: int
    create_time: str
    deleted: bool = False
    transient: bool = False  # made for one listing from an EventSource: its fields are nobody else's

    def entry(self) -> dict[str, Any]:
        """The event as the event list API returns it (a deleted event comes back cancelled)."""
        entry = {
            "organizer_calendar_id": self.calendar_id,
            "create_time": self.create_time,
            **(self.fields if self.transient else copy.deepcopy(self.fields)),
            "event_id": self.event_id,
        }
        if self.deleted:
            entry["status"] = "cancelled"
        return entry


class EventSource(Protocol):
    """A block of events made on demand (``add_generated_events``): ``count`` events, each with an id of its
    own that ``index`` maps back, and the fields it is created with (a fresh dict per call)."""

    count: int

    def event_id(self, index: int) -> str:
        """The id of event ``index``."""
        ...

    def index(self, event_id: str) -> int | None:
        """The index of ``event_id``, or None when it is not one of this block's."""
        ...

    def fields(self, index: int) -> dict[str, Any]:
        """The fields event ``index`` was created with."""
        ...


class _EventBook:
    """A calendar's events: those created one by one, and an optional generated block whose events exist
    only while listed, until one is looked up to be changed (then it is kept like any other)."""

    def __init__(self, calendar_id: str) -> None:
        self.calendar_id = calendar_id
        self._kept: dict[str, _EventState] = {}
        self._source: EventSource | None = None
        self._source_seq = 0
        self._source_created = ""

    def generate(self, source: EventSource, seq: int, create_time: str) -> None:
        """Hold ``source``'s events, all created at ``seq``."""
        if self._source is not None:
            raise ValueError(f"calendar {self.calendar_id} already has generated events")
        self._source, self._source_seq, self._source_created = source, seq, create_time

    def _made(self, index: int, *, transient: bool = True) -> _EventState:
        assert self._source is not None
        event_id, fields = self._source.event_id(index), self._source.fields(index)
        return _EventState(
            event_id, self.calendar_id, fields, self._source_seq, self._source_created, transient=transient
        )

    def __len__(self) -> int:
        generated = self._source.count if self._source else 0
        return generated + sum(1 for event_id in self._kept if not self._generated(event_id))

    def _generated(self, event_id: str) -> bool:
        return self._source is not None and self._source.index(event_id) is not None

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._kept or self._generated(event_id)

    def get(self, event_id: str) -> _EventState | None:
        """The event (a generated one is kept from now on: it is about to be read or changed)."""
        event = self._kept.get(event_id)
        if event is None and self._source is not None:
            index = self._source.index(event_id)
            if index is not None:
                event = self._kept[event_id] = self._made(index, transient=False)
        return event

    def __setitem__(self, event_id: str, event: _EventState) -> None:
        self._kept[event_id] = event

    def values(self) -> Iterator[_EventState]:
        """Every event, the generated block first (in its order), then the others in creation order."""
        if self._source is not None:
            for index in range(self._source.count):
                kept = self._kept.get(self._source.event_id(index))
                yield kept if kept is not None else self._made(index)
        for event_id, event in self._kept.items():
            if not self._generated(event_id):
                yield event

    def changed_since(self, seq: int) -> list[_EventState]:
        """The events changed after ``seq``, in the order of their changes."""
        if self._source is not None and seq >= self._source_seq:
            changed = (e for e in self._kept.values() if e.changed_seq > seq)
        else:
            changed = (e for e in self.values() if e.changed_seq > seq)
        return sorted(changed, key=lambda e: e.changed_seq)


@dataclass
class _User:
    open_id: str
    name: str
    union_id: str
    user_id: str
    calendars: dict[str, _CalendarState] = field(default_factory=dict)
    granted_scopes: list[str] = field(default_factory=list)
    subscribed: bool = False


@dataclass
class _AuthCode:
    open_id: str
    redirect_uri: str
    scope: str
    code_challenge: str
    code_challenge_method: str
    created: float
    used: bool = False


@dataclass
class _AccessToken:
    kind: Literal["tenant", "user"]
    open_id: str | None
    expires_at: float
    forced_expired: bool = False
    scopes: frozenset[str] = frozenset()
    grant: int = 0  # the consent it descends from (user tokens)


@dataclass
class _RefreshToken:
    open_id: str
    scopes: list[str]
    expires_at: float
    access_token: str
    grant: int = 0  # the consent it descends from: refreshes keep it, a new consent starts another
    state: Literal["active", "used", "revoked"] = "active"
    refused_with: int | None = None  # an injected refusal sticks: Feishu refuses this token so from then on


@dataclass(frozen=True)
class _Listing:
    """A listing's snapshot, shared by all of its pages."""

    open_id: str
    entries: tuple[dict[str, Any], ...]
    end_seq: int  # the world state the final sync_token stands for
    calendar_id: str = ""  # set for event listings


@dataclass(frozen=True)
class _PageCursor:
    listing: _Listing
    offset: int


@dataclass(frozen=True)
class _SyncPoint:
    open_id: str
    seq: int
    calendar_id: str = ""  # set for event listings


@dataclass
class _Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    rotate_refresh_token: bool = True


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    code: int | None = None


class _ApiError(Exception):
    """Raised inside a handler; carries the reply to send."""

    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


# Stands for a Decimal's text while json.dumps runs (a private-use character and a per-process nonce).
_NUMBER_MARK = "\ue000" + secrets.token_hex(6)
_MARKED_NUMBER = re.compile(f'"{re.escape(_NUMBER_MARK)}([^"]*){re.escape(_NUMBER_MARK)}"')


def _exact_number(value: object) -> str:
    if isinstance(value, Decimal):
        return f"{_NUMBER_MARK}{value}{_NUMBER_MARK}"
    raise TypeError(f"{type(value).__name__} is not JSON")


def json_bytes(payload: Any) -> bytes:
    """JSON text as Feishu sends it: UTF-8 (a lone surrogate as its ``\\u`` escape), floats in their
    shortest form and ``Decimal`` numbers as their exact text, however many digits."""
    text = json.dumps(payload, ensure_ascii=False, default=_exact_number)
    if _NUMBER_MARK in text:
        text = _MARKED_NUMBER.sub(lambda match: match.group(1), text)
    return text.encode("utf-8", "backslashreplace")


def _json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    code = payload.get("code") if isinstance(payload, dict) else None
    body = json_bytes(payload)
    return _Reply(status, body, headers=headers, code=code if isinstance(code, int) else None)


def _html_reply(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    page = f"<!doctype html><html><body><p>{text}</p></body></html>"
    return _Reply(status, page.encode("utf-8"), content_type=HTML_CONTENT_TYPE, headers=headers)


def _api_error(status: int, code: int, msg: str, **extra: Any) -> _ApiError:
    return _ApiError(_json_reply(status, {"code": code, "msg": msg, **extra}))


def _oauth_error(code: int, description: str) -> _ApiError:
    payload = {
        "code": code,
        "error": _OAUTH_ERROR_NAMES.get(code, "invalid_grant"),
        "error_description": description,
    }
    return _ApiError(_json_reply(_DEFAULT_HTTP_STATUS.get(code, 400), payload))


def _rate_limit_reply(limit: int, reset_seconds: int) -> _Reply:
    headers = (("x-ogw-ratelimit-limit", str(limit)), ("x-ogw-ratelimit-reset", str(reset_seconds)))
    return _json_reply(429, {"code": 99991400, "msg": "request trigger frequency limit"}, headers)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwt_like_token() -> str:
    """An opaque token shaped like Feishu's new-style (JWT-looking) user tokens."""
    header = _b64url(json.dumps({"alg": "ES256", "kid": "sim"}).encode())
    payload = _b64url(json.dumps({"jti": uuid.uuid4().hex, "iat": int(time.time())}).encode())
    return f"eyJ{header[3:]}.{payload}.{_b64url(secrets.token_bytes(64))}"


def _new_calendar_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "feishu.cn_" + "".join(secrets.choice(alphabet) for _ in range(24)) + "@group.calendar.feishu.cn"


def _validated_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check calendar fields given to create/update: known names, right types, allowed values."""
    unknown = sorted(set(fields) - set(CALENDAR_FIELD_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown calendar fields: {', '.join(unknown)}")
    for name, value in fields.items():
        expected = type(CALENDAR_FIELD_DEFAULTS[name])
        if type(value) is not expected:
            raise ValueError(f"calendar field {name} must be {expected.__name__}, got {value!r}")
        allowed = _ALLOWED_VALUES.get(name)
        if allowed is not None and value not in allowed:
            raise ValueError(f"calendar field {name} must be one of {sorted(allowed)}, got {value!r}")
    return dict(fields)


def _is_exception(fields: Mapping[str, Any]) -> bool:
    """An exception of a recurring event (one occurrence changed or cancelled)."""
    return fields.get("is_exception") is True and bool(fields.get("recurring_event_id"))


def _timestamp(time_info: Any) -> int | None:
    """The epoch seconds of a Feishu TimeInfo (``{"timestamp": "..."}``), or None when it has none."""
    raw = time_info.get("timestamp") if isinstance(time_info, dict) else None
    return int(raw) if isinstance(raw, str) and raw.isascii() and raw.isdigit() else None


def _occurrence_times(fields: Mapping[str, Any]) -> tuple[int, int, str]:
    """A recurring event's first start, its length and its timezone (defaults where it has none)."""
    start = _timestamp(fields.get("start_time")) or 1_767_225_600
    end = _timestamp(fields.get("end_time")) or start + 3600
    start_time = fields.get("start_time")
    timezone = start_time.get("timezone") if isinstance(start_time, dict) else None
    return start, max(0, end - start), timezone if isinstance(timezone, str) else "UTC"


def _with_query(url: str, params: Mapping[str, str | None]) -> str:
    parts = urlsplit(url)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _log_id() -> str:
    return time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(10).upper()


def api_name(method: str, path: str) -> str:
    """The API a request belongs to as Feishu's rate limits see it: its method and path template."""
    events = EVENTS_PATH.fullmatch(path)
    if events is not None:
        path = f"{CALENDARS_PATH}/:calendar_id/events{events.group(2) or ''}"
    return f"{method} {path}"


def _peak(times: list[float], window: float) -> int:
    best = 0
    start = 0
    for end, moment in enumerate(times):
        while moment - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


class _SlidingWindowLimiter:
    """Two sliding windows (1 s and 60 s) over accepted requests."""

    def __init__(self) -> None:
        self._accepted: deque[float] = deque()

    def admit(self, now: float, per_second: int, per_minute: int) -> tuple[int, int] | None:
        """Accept the request at `now`, or return (limit, reset_seconds) of the window it breaks."""
        while self._accepted and self._accepted[0] <= now - 60.0:
            self._accepted.popleft()
        if len(self._accepted) >= per_minute:
            frees_at = self._accepted[len(self._accepted) - per_minute] + 60.0
            return per_minute, max(1, math.ceil(frees_at - now))
        accepted = self._accepted
        in_last_second = len(accepted) - bisect.bisect_right(accepted, now - 1.0)
        if in_last_second >= per_second:
            frees_at = accepted[len(accepted) - per_second] + 1.0
            return per_second, max(1, math.ceil(frees_at - now))
        self._accepted.append(now)
        return None


# ---------------------------------------------------------------------------------------------
# The simulator


class FeishuSimulator:
    """Feishu OpenAPI + accounts origin, event pusher and fault injector, in one HTTP server."""

    def __init__(
        self,
        *,
        app_id: str = "cli_sim_app",
        app_secret: str = "sim-app-secret",  # noqa: S107 (simulator default)
        encrypt_key: str | None = "sim-encrypt-key",
        verification_token: str = "sim-verification-token",  # noqa: S107
        tenant_key: str = "sim_tenant",
        host: str = "127.0.0.1",
        port: int = 0,
        rate_per_second: int = 50,
        rate_per_minute: int = 1000,
        latency: tuple[float, float] = (0.0, 0.0),
        access_token_ttl: int = 7200,
        refresh_token_ttl: int = 604800,
        push_retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # What the API answers by (token expiry, rate limits, answer times): injectable for virtual time.
        # Pushes to a callback URL and the HTTP server always run in real time.
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self.app_id = app_id
        self.app_secret = app_secret
        self.encrypt_key = encrypt_key
        self.verification_token = verification_token
        self.tenant_key = tenant_key
        self.host = host
        self.port = port
        # Feishu's limits apply per API (method and path template), per app and tenant: each API of the
        # app gets both windows on its own.
        self.rate_per_second = rate_per_second
        self.rate_per_minute = rate_per_minute
        # Each accepted OpenAPI answer takes a uniformly random time in this range (seconds), like Feishu's.
        self.latency = latency
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self.push_retry_delays = push_retry_delays
        self.auth_code_ttl = 300.0
        # How an incremental event listing with more changes than a page goes on. The docs say page tokens
        # come only with anchor_time, so by default each page's sync_token is the next page's position;
        # "page_token" pages like a full listing, "none" says has_more and offers no way on.
        self.incremental_event_paging: Literal["sync_token", "page_token", "none"] = "sync_token"
        self.refresh_grace_seconds = 60.0
        self.push_timeout = 3.0  # Feishu counts a push as failed if not answered within 3 s
        self.sync_push_timeout = 30.0

        self.requests_log: list[RequestRecord] = []
        self.deliveries: list[Delivery] = []
        self.internal_errors: list[str] = []  # simulator bugs, answered with HTTP 500

        self._lock = threading.RLock()
        self._users: dict[str, _User] = {}
        self._seq = 0
        self._consent: tuple[str, bool] | None = None
        self._auth_codes: dict[str, _AuthCode] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._used_refresh_tokens: set[str] = set()
        self._issued_user_tokens: set[str] = set()
        self._refresh_reuse_count = 0
        self._grants = 0
        self._latest_grant: dict[str, int] = {}
        self._page_tokens: dict[str, _PageCursor] = {}
        self._sync_tokens: dict[str, _SyncPoint] = {}
        self._faults: list[tuple[str, deque[Fault]]] = []
        self._limiters: dict[str, _SlidingWindowLimiter] = {}
        self._request_times: dict[str, list[float]] = {}  # by API
        self._callback_url: str | None = None
        self._auto_push = True
        self._pushes_in_flight = 0
        self._pushes_idle = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: _SimulatorServer | None = None
        self._server_thread: threading.Thread | None = None
        self._routes: dict[tuple[str, str], Callable[[_Call], _Reply]] = {
            ("POST", TENANT_TOKEN_PATH): self._tenant_access_token,
            ("GET", AUTHORIZE_PATH): self._authorize_page,
            ("POST", OAUTH_TOKEN_PATH): self._oauth_token,
            ("GET", USER_INFO_PATH): self._user_info,
            ("GET", CALENDARS_PATH): self._list_calendars,
            ("POST", SUBSCRIPTION_PATH): self._subscribe,
            ("POST", UNSUBSCRIPTION_PATH): self._unsubscribe,
        }

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FeishuSimulator:
        """Bind the HTTP server and serve it from a background thread."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stopping.clear()
        self._server = _SimulatorServer((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="feishu-sim-http", daemon=True
        )
        self._server_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and abandon pending push retries."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._server_thread is not None:
            self._server_thread.join(timeout=5)
            self._server_thread = None
        self.wait_for_pushes(timeout=self.push_timeout + 1)

    def __enter__(self) -> FeishuSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def session(self) -> InProcessSession:
        """A ``requests.Session`` that this simulator answers in the calling thread, without HTTP."""
        return InProcessSession(self)

    @property
    def url(self) -> str:
        """The origin serving both the OpenAPI and the accounts paths, e.g. http://127.0.0.1:PORT."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        return f"http://{self.host}:{self.port}"

    # -- world ----------------------------------------------------------------------------------

    def app_environment(self) -> dict[str, str]:
        """The ``FEISHU_*`` variables that point the app at this simulator as its Feishu app."""
        return {
            "FEISHU_BASE_URL": self.url,
            "FEISHU_ACCOUNTS_URL": self.url,
            "FEISHU_APP_ID": self.app_id,
            "FEISHU_APP_SECRET": self.app_secret,
            "FEISHU_ENCRYPT_KEY": self.encrypt_key or "",
            "FEISHU_VERIFICATION_TOKEN": self.verification_token,
        }

    def add_user(
        self,
        open_id: str,
        name: str,
        *,
        union_id: str | None = None,
        user_id: str | None = None,
        primary_calendar_id: str | None = None,
    ) -> None:
        """Create a tenant user together with their primary calendar (``primary_calendar_id``, or a new id)."""
        with self._lock:
            if open_id in self._users:
                raise ValueError(f"user {open_id} already exists")
            user = _User(
                open_id=open_id,
                name=name,
                union_id=union_id or "on_" + secrets.token_hex(16),
                user_id=user_id or secrets.token_hex(4),
            )
            self._users[open_id] = user
            self._seq += 1
            calendar_id = primary_calendar_id or _new_calendar_id()
            fields = {**CALENDAR_FIELD_DEFAULTS, "summary": name, "type": "primary", "role": "owner"}
            user.calendars[calendar_id] = _CalendarState(calendar_id, fields, self._seq, events=_EventBook(calendar_id))

    def users(self) -> list[str]:
        """The open_ids of all users."""
        with self._lock:
            return list(self._users)

    def create_calendar(self, open_id: str, *, calendar_id: str | None = None, **fields: Any) -> str:
        """Add a calendar to the user's list (``calendar_id``, or a new id); returns its calendar_id."""
        values = _validated_fields(fields)
        with self._lock:
            user = self._user(open_id)
            calendar_id = calendar_id or _new_calendar_id()
            if calendar_id in user.calendars:
                raise ValueError(f"user {open_id} already has a calendar {calendar_id}")
            self._seq += 1
            state = {**CALENDAR_FIELD_DEFAULTS, "summary": f"Calendar {len(user.calendars) + 1}", **values}
            user.calendars[calendar_id] = _CalendarState(calendar_id, state, self._seq, events=_EventBook(calendar_id))
        self._after_mutation(open_id)
        return calendar_id

    def share_calendar(self, open_id: str, calendar_id: str, with_open_id: str, **fields: Any) -> None:
        """Put ``open_id``'s calendar in ``with_open_id``'s list too (an org-wide or team calendar): the same
        calendar_id and the same events, the calendar's fields as ``with_open_id`` sees them (``role``,
        ``type``, ...) overriding the owner's."""
        values = _validated_fields(fields)
        with self._lock:
            source = self._live_calendar(open_id, calendar_id)
            user = self._user(with_open_id)
            if calendar_id in user.calendars:
                raise ValueError(f"user {with_open_id} already has a calendar {calendar_id}")
            self._seq += 1
            state = {**source.fields, **values}
            user.calendars[calendar_id] = _CalendarState(calendar_id, state, self._seq, events=source.events)
        self._after_mutation(with_open_id)

    def add_generated_events(self, open_id: str, calendar_id: str, source: EventSource) -> None:
        """Give a calendar ``source.count`` events made on demand (see ``EventSource``), created now and
        listed like any other; they take memory only once changed. No push is sent for them."""
        with self._lock:
            calendar = self._live_calendar(open_id, calendar_id)
            self._seq += 1
            calendar.events.generate(source, self._seq, str(int(self._clock())))

    def update_calendar(self, open_id: str, calendar_id: str, **fields: Any) -> None:
        """Change fields of one of the user's live calendars."""
        values = _validated_fields(fields)
        with self._lock:
            calendar = self._live_calendar(open_id, calendar_id)
            self._seq += 1
            calendar.fields.update(values)
            calendar.changed_seq = self._seq
        self._after_mutation(open_id)

    def delete_calendar(self, open_id: str, calendar_id: str) -> None:
        """The user removes the calendar from their list (incremental listings report is_deleted)."""
        with self._lock:
            calendar = self._live_calendar(open_id, calendar_id)
            self._seq += 1
            calendar.deleted = True
            calendar.changed_seq = self._seq
        self._after_mutation(open_id)

    def calendars(self, open_id: str) -> list[dict[str, Any]]:
        """The user's live calendars exactly as a full listing returns them, without is_deleted."""
        with self._lock:
            user = self._user(open_id)
            entries = [c.entry() for c in user.calendars.values() if not c.deleted]
        for entry in entries:
            del entry["is_deleted"]
        return entries

    def primary_calendar_id(self, open_id: str) -> str:
        """The calendar_id of the user's primary calendar (every user has one: ``add_user`` creates it)."""
        return str(next(c["calendar_id"] for c in self.calendars(open_id) if c["type"] == "primary"))

    def create_event(self, open_id: str, calendar_id: str, *, event_id: str | None = None, **fields: Any) -> str:
        """Add an event (日程) to one of the user's calendars; returns its event_id (``<uid>_0`` as Feishu's
        are, unless given, e.g. ``<uid>_<original start>`` for an exception of a recurring event). Fields are
        held as given, whatever they are (a ``Decimal`` keeps its text)."""
        with self._lock:
            calendar = self._live_calendar(open_id, calendar_id)
            event_id = event_id if event_id is not None else f"{uuid.uuid4()}_0"
            if event_id in calendar.events:
                raise ValueError(f"calendar {calendar_id} already has an event {event_id}")
            self._seq += 1
            values = {
                **copy.deepcopy(EVENT_FIELD_DEFAULTS),
                "summary": f"Event {len(calendar.events) + 1}",
                **copy.deepcopy(fields),
            }
            calendar.events[event_id] = _EventState(event_id, calendar_id, values, self._seq, str(int(self._clock())))
        self._after_event_mutation(open_id, calendar_id, event_id, "create")
        return event_id

    def create_exception(
        self,
        open_id: str,
        calendar_id: str,
        master_id: str,
        original_start: int | None = None,
        *,
        cancelled: bool = False,
        **fields: Any,
    ) -> str:
        """One occurrence of a recurring event changed (or, ``cancelled``, taken out), as Feishu models it:
        an exception with event_id ``<uid>_<original start>``, ``is_exception``, ``recurring_event_id``
        naming the master, the master's fields with the occurrence's times and then ``fields``.

        ``original_start`` (epoch seconds) defaults to a day after the master's latest exception.
        Returns the exception's event_id.
        """
        with self._lock:
            master = self._live_event(open_id, calendar_id, master_id)
            if not master.fields.get("recurrence"):
                raise ValueError(f"event {master_id} is not recurring")
            start, length, timezone = _occurrence_times(master.fields)
            if original_start is None:
                taken = [
                    int(e.event_id.rsplit("_", 1)[1])
                    for e in self._live_calendar(open_id, calendar_id).events.values()
                    if e.fields.get("recurring_event_id") == master_id and e.event_id.rsplit("_", 1)[1].isdigit()
                ]
                original_start = max([start, *taken]) + 86400
            occurrence = {
                "start_time": {"timestamp": str(original_start), "timezone": timezone},
                "end_time": {"timestamp": str(original_start + length), "timezone": timezone},
            }
            values = {
                **copy.deepcopy(master.fields),
                **occurrence,
                "recurrence": "",
                "is_exception": True,
                "recurring_event_id": master_id,
                **copy.deepcopy(fields),
            }
            if cancelled:
                values["status"] = "cancelled"
        return self.create_event(
            open_id, calendar_id, event_id=f"{master_id.rsplit('_', 1)[0]}_{original_start}", **values
        )

    def update_event(self, open_id: str, calendar_id: str, event_id: str, **fields: Any) -> None:
        """Change fields of a live event."""
        with self._lock:
            event = self._live_event(open_id, calendar_id, event_id)
            self._seq += 1
            event.fields.update(copy.deepcopy(fields))
            event.changed_seq = self._seq
        self._after_event_mutation(open_id, calendar_id, event_id, "update")

    def delete_event(self, open_id: str, calendar_id: str, event_id: str, *, exceptions_first: bool = False) -> None:
        """Delete an event (incremental listings then return it with status "cancelled").

        On an exception of a recurring event this cancels that occurrence: Feishu keeps the exception,
        with status "cancelled". On a recurring event's master it deletes the master's exceptions too;
        an incremental listing returns their changes after the master's (``exceptions_first``: before).
        """
        with self._lock:
            calendar = self._live_calendar(open_id, calendar_id)
            event = self._live_event(open_id, calendar_id, event_id)
            if _is_exception(event.fields):
                self._seq += 1
                event.fields["status"] = "cancelled"
                event.changed_seq = self._seq
            else:
                exceptions = [
                    e
                    for e in calendar.events.values()
                    if not e.deleted and _is_exception(e.fields) and e.fields["recurring_event_id"] == event_id
                ]
                for gone in [*exceptions, event] if exceptions_first else [event, *exceptions]:
                    self._seq += 1
                    gone.deleted = True
                    gone.changed_seq = self._seq
        self._after_event_mutation(open_id, calendar_id, event_id, "delete")

    def events(self, open_id: str, calendar_id: str) -> list[dict[str, Any]]:
        """The calendar's live events exactly as a full event listing returns them (the truth)."""
        with self._lock:
            calendar = self._user(open_id).calendars[calendar_id]
            return [e.entry() for e in calendar.events.values() if not e.deleted]

    def event_count(self, open_id: str, calendar_id: str) -> int:
        """How many events (live or deleted) the calendar holds, generated ones included."""
        with self._lock:
            return len(self._user(open_id).calendars[calendar_id].events)

    def is_subscribed_to_events(self, open_id: str, calendar_id: str) -> bool:
        """Whether the user subscribed to event changes of this calendar."""
        with self._lock:
            return self._user(open_id).calendars[calendar_id].events_subscribed

    def set_consent_user(self, open_id: str | None, *, deny: bool = False) -> None:
        """Choose who "clicks Authorize" (or "Deny") on the consent page; None = nobody signed in."""
        with self._lock:
            if open_id is not None:
                self._user(open_id)
            self._consent = None if open_id is None else (open_id, deny)

    def set_subscribed(self, open_id: str, subscribed: bool = True) -> None:
        """Set the user's calendar-change subscription without going through the API."""
        with self._lock:
            self._user(open_id).subscribed = subscribed

    def is_subscribed(self, open_id: str) -> bool:
        """Whether the user is subscribed to calendar change events."""
        with self._lock:
            return self._user(open_id).subscribed

    def issue_user_tokens(
        self, open_id: str, *, scope: str = DEFAULT_SCOPE, revoke_previous: bool = False
    ) -> dict[str, Any]:
        """Mint a token pair as if the user had consented (again); returns the OAuth token response body.

        With ``revoke_previous`` the user's earlier refresh tokens stop working (20064).
        """
        with self._lock:
            user = self._user(open_id)
            self._grant_scopes(user, scope)
            if revoke_previous:
                self._revoke_refresh_tokens(open_id)
            return self._issue_user_tokens(open_id, list(user.granted_scopes))

    def withdraw_scope(self, open_id: str, scope: str) -> None:
        """The user's grant loses ``scope``: their tokens, refreshed ones included, no longer carry it."""
        with self._lock:
            user = self._user(open_id)
            user.granted_scopes = [s for s in user.granted_scopes if s != scope]
            for access in self._access_tokens.values():
                if access.open_id == open_id:
                    access.scopes = access.scopes - {scope}
            for refresh in self._refresh_tokens.values():
                if refresh.open_id == open_id:
                    refresh.scopes = [s for s in refresh.scopes if s != scope]

    def grant_of(self, token: str | None) -> int | None:
        """The consent an access or refresh token descends from (numbered in issue order), or None."""
        if token is None:
            return None
        with self._lock:
            record = self._refresh_tokens.get(token) or self._access_tokens.get(token)
            return record.grant if record is not None else None

    def latest_grant(self, open_id: str) -> int | None:
        """The user's most recent consent."""
        with self._lock:
            return self._latest_grant.get(open_id)

    # -- faults and expiry ----------------------------------------------------------------------

    def expire_sync_tokens(self, open_id: str | None = None) -> None:
        """Every sync_token and page_token issued so far (for one user or all) now gives 190008."""
        with self._lock:
            self._sync_tokens = {
                token: point
                for token, point in self._sync_tokens.items()
                if open_id is not None and point.open_id != open_id
            }
            self._page_tokens = {
                token: cursor
                for token, cursor in self._page_tokens.items()
                if open_id is not None and cursor.listing.open_id != open_id
            }

    def expire_access_tokens(self, open_id: str | None = None) -> None:
        """Access tokens issued so far (one user's, or all incl. tenant tokens) now give 99991677."""
        with self._lock:
            for token in self._access_tokens.values():
                if open_id is None or token.open_id == open_id:
                    token.forced_expired = True

    def revoke_refresh_tokens(self, open_id: str) -> None:
        """The user's unused refresh tokens now give 20064."""
        with self._lock:
            self._revoke_refresh_tokens(open_id)

    def _revoke_refresh_tokens(self, open_id: str) -> None:
        for token in self._refresh_tokens.values():
            if token.open_id == open_id and token.state == "active":
                token.state = "revoked"

    def inject(self, path_prefix: str, *faults: Fault) -> None:
        """Queue faults for requests whose path starts with `path_prefix`; one consumed per request."""
        with self._lock:
            for prefix, queue in self._faults:
                if prefix == path_prefix:
                    queue.extend(faults)
                    return
            self._faults.append((path_prefix, deque(faults)))

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    # -- pushes ---------------------------------------------------------------------------------

    def set_callback_url(self, url: str | None, *, auto_push: bool = True) -> None:
        """Where events go; with auto_push every change of a subscribed user's calendars is pushed."""
        with self._lock:
            self._callback_url = url
            self._auto_push = auto_push

    def push_calendar_changed(
        self, open_ids: list[str], *, delivery_id: str | None = None, callback_url: str | None = None
    ) -> requests.Response:
        """Deliver one calendar.calendar.changed_v4 event synchronously (no retry)."""
        url = self._resolve_callback_url(callback_url)
        payload = self.calendar_changed_payload(open_ids, delivery_id=delivery_id)
        headers, body = self.build_callback_request(payload)
        return self._post_event(url, payload, headers, body, attempt=1, timeout=self.sync_push_timeout)

    def push_url_verification(
        self, challenge: str, *, callback_url: str | None = None, signed: bool = False
    ) -> requests.Response:
        """Send the url_verification challenge (encrypted when a key is set; unsigned by default)."""
        url = self._resolve_callback_url(callback_url)
        payload = {"challenge": challenge, "token": self.verification_token, "type": "url_verification"}
        headers, body = self.build_callback_request(payload)
        if not signed:
            headers = {k: v for k, v in headers.items() if not k.startswith("X-Lark-")}
        return self._post_event(url, payload, headers, body, attempt=1, timeout=self.sync_push_timeout)

    def calendar_changed_payload(self, open_ids: list[str], *, delivery_id: str | None = None) -> dict[str, Any]:
        """A schema 2.0 calendar.calendar.changed_v4 payload for these users (``delivery_id``: its
        ``header.event_id``, a fresh one by default)."""
        with self._lock:
            user_ids = []
            for open_id in open_ids:
                user = self._users.get(open_id)
                union_id, user_id = (user.union_id, user.user_id) if user else ("", "")
                user_ids.append({"union_id": union_id, "user_id": user_id, "open_id": open_id})
        return {
            "schema": "2.0",
            "header": {
                "event_id": delivery_id or uuid.uuid4().hex,
                "event_type": CALENDAR_CHANGED_EVENT,
                "create_time": str(int(time.time() * 1000)),
                "token": self.verification_token,
                "app_id": self.app_id,
                "tenant_key": self.tenant_key,
            },
            "event": {"user_id_list": user_ids},
        }

    def event_changed_payload(
        self,
        open_id: str,
        calendar_id: str,
        *,
        event_id: str = "",
        change_type: str = "",
        delivery_id: str | None = None,
    ) -> dict[str, Any]:
        """A calendar.calendar.event.changed_v4 payload (``calendar_event_id``/``change_type`` are gray fields;
        ``event_id`` is the calendar event's, ``delivery_id`` the push's ``header.event_id``)."""
        payload = self.calendar_changed_payload([open_id], delivery_id=delivery_id)
        payload["header"]["event_type"] = EVENT_CHANGED_EVENT
        payload["event"]["calendar_id"] = calendar_id
        if event_id:
            payload["event"]["calendar_event_id"] = event_id
        if change_type:
            payload["event"]["change_type"] = change_type
        return payload

    def push_event_changed(
        self, open_id: str, calendar_id: str, *, callback_url: str | None = None
    ) -> requests.Response:
        """Deliver one calendar.calendar.event.changed_v4 event synchronously (no retry)."""
        url = self._resolve_callback_url(callback_url)
        payload = self.event_changed_payload(open_id, calendar_id)
        headers, body = self.build_callback_request(payload)
        return self._post_event(url, payload, headers, body, attempt=1, timeout=self.sync_push_timeout)

    def build_callback_request(
        self,
        payload: dict[str, Any],
        *,
        encrypted: bool = True,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """Headers and raw body of a push as Feishu sends it (signed whenever an encrypt key is set)."""
        plaintext = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        key = self.encrypt_key
        if encrypted and key:
            body = json.dumps({"encrypt": encrypt_event(key, plaintext)}, separators=(",", ":")).encode()
        else:
            body = plaintext
        headers = {"Content-Type": JSON_CONTENT_TYPE}
        if key:
            stamp = str(timestamp if timestamp is not None else int(time.time()))
            nonce_value = nonce if nonce is not None else secrets.token_hex(8)
            headers["X-Lark-Request-Timestamp"] = stamp
            headers["X-Lark-Request-Nonce"] = nonce_value
            headers["X-Lark-Signature"] = event_signature(stamp, nonce_value, key, body)
        return headers, body

    def wait_for_pushes(self, timeout: float = 10.0) -> bool:
        """Wait until no background push (or retry) is pending; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._pushes_idle:
            while self._pushes_in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._pushes_idle.wait(remaining)
        return True

    # -- observation ----------------------------------------------------------------------------

    def peak_rates(self, api: str | None = None) -> tuple[int, int]:
        """Most requests to ``api`` (by default: to any one API) seen in any sliding 1 s and any sliding
        60 s window, 429s included. Compare with ``rate_per_second`` and ``rate_per_minute``."""
        peaks = self.peak_rates_by_api()
        if api is not None:
            return peaks.get(api, (0, 0))
        return max((p[0] for p in peaks.values()), default=0), max((p[1] for p in peaks.values()), default=0)

    def peak_rates_by_api(self) -> dict[str, tuple[int, int]]:
        """For each API called: the most requests seen in any sliding 1 s and any sliding 60 s window."""
        with self._lock:
            by_api = {api: list(times) for api, times in self._request_times.items()}
        return {api: (_peak(times, 1.0), _peak(times, 60.0)) for api, times in by_api.items()}

    def issued_user_tokens(self) -> frozenset[str]:
        """Every user access token and refresh token this simulator ever issued."""
        with self._lock:
            return frozenset(self._issued_user_tokens)

    def used_refresh_tokens(self) -> frozenset[str]:
        """Refresh tokens that have been redeemed (each may be redeemed once)."""
        with self._lock:
            return frozenset(self._used_refresh_tokens)

    @property
    def refresh_token_reuse_count(self) -> int:
        """How many times an already-used refresh token was presented again."""
        with self._lock:
            return self._refresh_reuse_count

    # -- HTTP dispatch --------------------------------------------------------------------------

    def _dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> _Reply | None:
        """Answer one HTTP request; None means: drop the connection."""
        split = urlsplit(raw_path)
        call = _Call(method, unquote(split.path), dict(parse_qsl(split.query, keep_blank_values=True)), headers, body)
        log_id = ("X-Tt-Logid", _log_id())
        try:
            if call.path.startswith(ADMIN_PREFIX):
                reply: _Reply | None = self._handle_admin(call)
            else:
                reply = self._handle_feishu(call)
        except Exception:
            trace = traceback.format_exc()
            with self._lock:
                self.internal_errors.append(trace)
            print(trace, file=sys.stderr)
            reply = _json_reply(500, {"code": -1, "msg": "simulator internal error"})
        if reply is None:
            return None
        return _Reply(reply.status, reply.body, reply.content_type, (*reply.headers, log_id), reply.code)

    def _handle_feishu(self, call: _Call) -> _Reply | None:
        started = self._clock()
        is_app_request = call.path != AUTHORIZE_PATH  # the consent page is the user's browser
        api = api_name(call.method, call.path)
        fault: Fault | None = None
        with self._lock:
            if is_app_request:
                now = self._monotonic()
                self._request_times.setdefault(api, []).append(now)
                limiter = self._limiters.setdefault(api, _SlidingWindowLimiter())
                rejection = limiter.admit(now, self.rate_per_second, self.rate_per_minute)
            else:
                rejection = None
            if rejection is None:
                fault = self._take_fault(call.path)
        if rejection is None and is_app_request and self.latency[1] > 0:
            self._sleep(random.uniform(*self.latency))
        reply: _Reply | None
        if rejection is not None:
            reply = _rate_limit_reply(*rejection)
        elif fault is not None and fault.kind == "empty_page":
            reply = self._route(call, empty_page=True)
        elif fault is not None and fault.kind in ("lost_reply", "late_reply", "gateway_timeout", "unrotated_refresh"):
            call.rotate_refresh_token = fault.kind != "unrotated_refresh"
            reply = self._route(call)  # processed: a refresh spends its token whatever reaches the client
            if fault.kind == "lost_reply":
                reply = None
            elif fault.kind == "gateway_timeout":
                reply = _html_reply(504, "504 Gateway Time-out")
        elif fault is not None and fault.kind != "delay":
            self._refuse_refresh_token(call, fault)
            reply = self._fault_reply(fault, call.path)
        else:
            if fault is not None:
                self._sleep(fault.seconds)
            reply = self._route(call)
        fault_name = "rate_limit" if rejection is not None else (fault.kind if fault else None)
        self._record(call, started, reply, fault_name, api)
        if fault is not None and fault.kind == "late_reply":
            self._sleep(fault.seconds)
        return reply

    def _route(self, call: _Call, *, empty_page: bool = False) -> _Reply:
        try:
            return self._handler(call, empty_page)(call)
        except _ApiError as error:
            return error.reply

    def _handler(self, call: _Call, empty_page: bool) -> Callable[[_Call], _Reply]:
        if empty_page and call.path == CALENDARS_PATH:
            return lambda c: self._list_calendars(c, empty_page=True)
        events = EVENTS_PATH.fullmatch(call.path)
        if events is not None:
            calendar_id, action = events.group(1), events.group(2) or ""
            return lambda c: self._events_route(c, calendar_id, action, empty_page=empty_page)
        handler = self._routes.get((call.method, call.path))
        if handler is not None:
            return handler
        if any(path == call.path for _, path in self._routes):
            return lambda _c: _json_reply(405, {"code": 405, "msg": "method not allowed"})
        return lambda _c: _json_reply(404, {"code": 404, "msg": "404 page not found"})

    def _take_fault(self, path: str) -> Fault | None:
        for prefix, queue in self._faults:
            if queue and path.startswith(prefix):
                return queue.popleft()
        return None

    def _refuse_refresh_token(self, call: _Call, fault: Fault) -> None:
        """A refresh refused by an injected code other than 20050/20072 (and 5xx) is refused for good."""
        if call.path != OAUTH_TOKEN_PATH or fault.kind != "feishu_error" or fault.code in (20050, 20072):
            return
        if fault.status >= 500:
            return
        try:
            body = json.loads(call.body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if isinstance(body, dict) and body.get("grant_type") == "refresh_token":
            with self._lock:
                record = self._refresh_tokens.get(str(body.get("refresh_token")))
                if record is not None and record.state == "active":
                    record.refused_with = fault.code

    def _fault_reply(self, fault: Fault, path: str) -> _Reply | None:
        if fault.kind == "drop":
            return None
        if fault.kind == "rate_limited":
            return _rate_limit_reply(self.rate_per_second, max(1, math.ceil(fault.seconds)))
        if fault.code is None:
            return _html_reply(fault.status, f"{fault.status} simulated gateway error")
        if path == OAUTH_TOKEN_PATH:
            error = _OAUTH_ERROR_NAMES.get(fault.code, "invalid_grant")
            payload = {"code": fault.code, "error": error, "error_description": fault.msg}
            return _json_reply(fault.status, payload)
        if fault.scopes:
            return self._scope_error(fault.code, fault.scopes, fault.msg, fault.status)
        return _json_reply(fault.status, {"code": fault.code, "msg": fault.msg})

    @staticmethod
    def _scope_error(code: int, scopes: tuple[str, ...], msg: str, status: int = 400) -> _Reply:
        """A missing-scope answer, naming the scopes (any one would do) in error.permission_violations."""
        violations = [
            {"type": "action_privilege_required", "subject": scope, "description": f"requires scope {scope}"}
            for scope in scopes
        ]
        error = {"log_id": _log_id(), "permission_violations": violations}
        return _json_reply(status, {"code": code, "msg": msg, "error": error})

    def _record(self, call: _Call, started: float, reply: _Reply | None, fault: str | None, api: str) -> None:
        token = self._bearer(call.headers)
        with self._lock:
            known = self._access_tokens.get(token) if token else None
            token_kind: Literal["tenant", "user", "unknown"] | None = (
                None if token is None else (known.kind if known else "unknown")
            )
            self.requests_log.append(
                RequestRecord(
                    time=started,
                    method=call.method,
                    path=call.path,
                    query=call.query,
                    status=reply.status if reply else None,
                    code=reply.code if reply else None,
                    token_kind=token_kind,
                    open_id=known.open_id if known else None,
                    fault=fault,
                    api=api,
                )
            )

    # -- OpenAPI handlers -----------------------------------------------------------------------

    def _tenant_access_token(self, call: _Call) -> _Reply:
        body = self._json_body(call, lambda: _api_error(400, 10003, "invalid param"))
        if body.get("app_id") != self.app_id:
            raise _api_error(400, 10003, "invalid param: app_id")
        if not secrets.compare_digest(str(body.get("app_secret", "")), self.app_secret):
            raise _api_error(400, 10014, "app secret invalid")
        token = "t-" + secrets.token_hex(20)
        with self._lock:
            self._access_tokens[token] = _AccessToken("tenant", None, self._clock() + self.access_token_ttl)
        return _json_reply(200, {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": self.access_token_ttl})

    def _authorize_page(self, call: _Call) -> _Reply:
        query = call.query
        if query.get("client_id") != self.app_id:
            return _html_reply(400, "Error 20048: the app does not exist (unknown client_id).")
        redirect_uri = query.get("redirect_uri", "")
        if urlsplit(redirect_uri).scheme not in ("http", "https") or not urlsplit(redirect_uri).netloc:
            return _html_reply(400, "Error 20029: redirect_uri is missing or invalid.")
        challenge = query.get("code_challenge", "")
        method = query.get("code_challenge_method") or ("plain" if challenge else "")
        if challenge and method not in ("S256", "plain"):
            return _html_reply(400, "Error: unsupported code_challenge_method.")
        state = query.get("state")
        with self._lock:
            consent = self._consent
            if consent is None:
                return _html_reply(400, "Nobody is signed in to Feishu (simulator: no consent user set).")
            open_id, deny = consent
            if deny:
                location = _with_query(redirect_uri, {"error": "access_denied", "state": state})
                return _html_reply(302, "Redirecting", (("Location", location),))
            scope = query.get("scope", "")
            self._grant_scopes(self._user(open_id), scope)
            code = secrets.token_urlsafe(48)
            self._auth_codes[code] = _AuthCode(open_id, redirect_uri, scope, challenge, method, self._clock())
        location = _with_query(redirect_uri, {"code": code, "state": state})
        return _html_reply(302, "Redirecting", (("Location", location),))

    def _oauth_token(self, call: _Call) -> _Reply:
        body = self._json_body(call, lambda: _oauth_error(20063, "malformed request: body must be JSON"))
        grant_type = body.get("grant_type")
        if not grant_type or not body.get("client_id") or not body.get("client_secret"):
            raise _oauth_error(20001, "missing required parameter")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise _oauth_error(20036, f"unsupported grant_type {grant_type}")
        if body["client_id"] != self.app_id:
            raise _oauth_error(20048, "app does not exist")
        if not secrets.compare_digest(str(body["client_secret"]), self.app_secret):
            raise _oauth_error(20002, "client secret invalid")
        with self._lock:
            if grant_type == "authorization_code":
                tokens = self._redeem_code(body)
            else:
                tokens = self._redeem_refresh_token(body, rotate=call.rotate_refresh_token)
        return _json_reply(200, tokens)

    def _redeem_code(self, body: dict[str, Any]) -> dict[str, Any]:
        code = body.get("code")
        if not isinstance(code, str) or not code:
            raise _oauth_error(20001, "missing required parameter: code")
        grant = self._auth_codes.get(code)
        if grant is None:
            raise _oauth_error(20003, "authorization code not found")
        if grant.used:
            raise _oauth_error(20065, "authorization code has been used")
        if self._clock() - grant.created > self.auth_code_ttl:
            raise _oauth_error(20004, "authorization code expired")
        if body.get("redirect_uri") != grant.redirect_uri:
            raise _oauth_error(20071, "redirect_uri mismatch")
        if grant.code_challenge:
            verifier = body.get("code_verifier")
            if not isinstance(verifier, str) or not verifier:
                raise _oauth_error(20049, "PKCE verification failed: code_verifier missing")
            if grant.code_challenge_method == "S256":
                expected = _b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
            else:
                expected = verifier
            if not secrets.compare_digest(expected, grant.code_challenge):
                raise _oauth_error(20049, "PKCE verification failed")
        user = self._user(grant.open_id)
        scopes = self._narrowed_scopes(list(user.granted_scopes), body.get("scope"))
        grant.used = True
        return self._issue_user_tokens(grant.open_id, scopes)

    def _redeem_refresh_token(self, body: dict[str, Any], *, rotate: bool = True) -> dict[str, Any]:
        presented = body.get("refresh_token")
        if not isinstance(presented, str) or not presented:
            raise _oauth_error(20001, "missing required parameter: refresh_token")
        record = self._refresh_tokens.get(presented)
        if record is None:
            raise _oauth_error(20026, "refresh token invalid")
        if record.refused_with is not None:
            raise _oauth_error(record.refused_with, "refresh token refused")
        if record.state == "revoked":
            raise _oauth_error(20064, "refresh token revoked")
        if record.state == "used":
            self._refresh_reuse_count += 1
            raise _oauth_error(20073, "refresh token has been used")
        now = self._clock()
        if now >= record.expires_at:
            raise _oauth_error(20037, "refresh token expired")
        scopes = self._narrowed_scopes(record.scopes, body.get("scope"))
        previous = self._access_tokens.get(record.access_token)
        if previous is not None:
            previous.expires_at = min(previous.expires_at, now + self.refresh_grace_seconds)
        if not rotate:  # a new access token only: the presented refresh token stays valid
            tokens = self._issue_user_tokens(record.open_id, scopes, grant=record.grant, with_refresh=False)
            record.access_token = tokens["access_token"]
            return tokens
        record.state = "used"
        self._used_refresh_tokens.add(presented)
        return self._issue_user_tokens(record.open_id, scopes, grant=record.grant)

    def _user_info(self, call: _Call) -> _Reply:
        user = self._authenticated_user(call)
        data = {
            "name": user.name,
            "en_name": user.name,
            "open_id": user.open_id,
            "union_id": user.union_id,
            "user_id": user.user_id,
            "tenant_key": self.tenant_key,
            "avatar_url": "https://example.invalid/avatar.png",
        }
        return _json_reply(200, {"code": 0, "msg": "success", "data": data})

    def _list_calendars(self, call: _Call, *, empty_page: bool = False) -> _Reply:
        user = self._authenticated_user(
            call, tenant_error=(404, 190007, "app bot_id not found"), scopes=CALENDAR_SCOPES
        )
        page_size = self._page_size(call.query.get("page_size"))
        page_token = call.query.get("page_token", "")
        sync_token = call.query.get("sync_token", "")
        with self._lock:
            if page_token:
                cursor = self._page_tokens.get(page_token)
                if cursor is None:
                    raise _api_error(400, 190008, "page_token or sync_token expired")
                if cursor.listing.open_id != user.open_id:
                    raise _api_error(400, 190002, "invalid parameters in request: page_token")
                listing, offset = cursor.listing, cursor.offset
            elif sync_token:
                point = self._sync_tokens.get(sync_token)
                if point is None:
                    raise _api_error(400, 190008, "page_token or sync_token expired")
                if point.open_id != user.open_id:
                    raise _api_error(400, 190002, "invalid parameters in request: sync_token")
                changed = sorted(
                    (c for c in user.calendars.values() if c.changed_seq > point.seq),
                    key=lambda c: c.changed_seq,
                )
                listing, offset = _Listing(user.open_id, tuple(c.entry() for c in changed), self._seq), 0
            else:
                live = tuple(c.entry() for c in user.calendars.values() if not c.deleted)
                listing, offset = _Listing(user.open_id, live, self._seq), 0
            if empty_page:
                page_token = "ListCalendarsPageToken_" + secrets.token_urlsafe(24)
                self._keep_page_token(page_token, _PageCursor(listing, offset))
                data = {"has_more": True, "page_token": page_token, "sync_token": "", "calendar_list": []}
            else:
                data = self._page(listing, offset, page_size)
        return _json_reply(200, {"code": 0, "msg": "success", "data": data})

    def _keep_page_token(self, token: str, cursor: _PageCursor) -> None:
        """Hand out a page token; the oldest ones expire (190008) once ``MAX_PAGE_TOKENS`` are out, as
        Feishu's expire with time (each holds its listing's snapshot)."""
        self._page_tokens[token] = cursor
        while len(self._page_tokens) > MAX_PAGE_TOKENS:
            del self._page_tokens[next(iter(self._page_tokens))]

    def _page(self, listing: _Listing, offset: int, page_size: int) -> dict[str, Any]:
        page = [dict(entry) for entry in listing.entries[offset : offset + page_size]]
        next_offset = offset + len(page)
        if next_offset < len(listing.entries):
            page_token = "ListCalendarsPageToken_" + secrets.token_urlsafe(24)
            self._keep_page_token(page_token, _PageCursor(listing, next_offset))
            return {"has_more": True, "page_token": page_token, "sync_token": "", "calendar_list": page}
        sync_token = "ListCalendarsSyncToken_" + secrets.token_urlsafe(24)
        self._sync_tokens[sync_token] = _SyncPoint(listing.open_id, listing.end_seq)
        return {"has_more": False, "page_token": "", "sync_token": sync_token, "calendar_list": page}

    def _events_route(self, call: _Call, calendar_id: str, action: str, *, empty_page: bool = False) -> _Reply:
        user = self._authenticated_user(
            call, tenant_error=(400, 99991663, "tenant access token not support"), scopes=EVENT_SCOPES
        )
        with self._lock:
            calendar = user.calendars.get(calendar_id)
            if calendar is None or calendar.deleted:
                raise _api_error(404, 191000, "calendar not found")
            if calendar.fields["type"] not in EVENT_SYNCABLE_TYPES:
                raise _api_error(403, 191004, "invalid calendar type")
            if calendar.fields["role"] not in ("reader", "writer", "owner"):
                raise _api_error(403, 191002, "no calendar access_role")
            if action:
                if call.method != "POST":
                    return _json_reply(405, {"code": 405, "msg": "method not allowed"})
                calendar.events_subscribed = action == "/subscription"
                return _json_reply(200, {"code": 0, "msg": "success", "data": {}})
            if call.method != "GET":
                return _json_reply(405, {"code": 405, "msg": "method not allowed"})
            return self._list_events(call, user, calendar, empty_page=empty_page)

    def _list_events(self, call: _Call, user: _User, calendar: _CalendarState, *, empty_page: bool = False) -> _Reply:
        query = call.query
        page_size = self._page_size(query.get("page_size"))
        page_token, sync_token = query.get("page_token", ""), query.get("sync_token", "")
        anchor = query.get("anchor_time", "")
        if (query.get("start_time") or query.get("end_time")) and (page_token or sync_token or anchor):
            raise _api_error(400, 190009, "sync token cannot be used with other request restrictions")
        if page_token:
            cursor = self._page_tokens.get(page_token)
            if cursor is None:
                raise _api_error(400, 190008, "page_token or sync_token expired")
            if cursor.listing.open_id != user.open_id or cursor.listing.calendar_id != calendar.calendar_id:
                raise _api_error(400, 190002, "invalid parameters in request: page_token")
            listing, offset, pageable = cursor.listing, cursor.offset, True
        elif sync_token:
            point = self._sync_tokens.get(sync_token)
            if point is None:
                raise _api_error(400, 190008, "page_token or sync_token expired")
            if point.open_id != user.open_id or point.calendar_id != calendar.calendar_id:
                raise _api_error(400, 190002, "invalid parameters in request: sync_token")
            changed = calendar.events.changed_since(point.seq)
            if self.incremental_event_paging != "page_token" and (empty_page or len(changed) > page_size):
                return self._incremental_events_page(
                    user, calendar, point.seq, [] if empty_page else changed[:page_size]
                )
            entries = tuple(e.entry() for e in changed)
            listing, offset, pageable = _Listing(user.open_id, entries, self._seq, calendar.calendar_id), 0, True
        else:
            since = int(anchor) if anchor.isdigit() else None
            live = [e for e in calendar.events.values() if not e.deleted]
            if since is not None:
                live = [e for e in live if (_timestamp(e.fields.get("end_time")) or since) >= since]
            entries = tuple(e.entry() for e in live)
            # Documented quirk: a page_token is only returned when anchor_time was passed.
            listing, offset, pageable = (
                _Listing(user.open_id, entries, self._seq, calendar.calendar_id),
                0,
                since is not None,
            )
        page = [] if empty_page else [dict(entry) for entry in listing.entries[offset : offset + page_size]]
        next_offset = offset + len(page)
        if empty_page or next_offset < len(listing.entries):
            token = ""
            if pageable:
                token = "ListEventsPageToken_" + secrets.token_urlsafe(24)
                self._keep_page_token(token, _PageCursor(listing, next_offset))
            data = {"has_more": True, "page_token": token, "sync_token": "", "items": page}
        else:
            token = "ListEventsSyncToken_" + secrets.token_urlsafe(24)
            self._sync_tokens[token] = _SyncPoint(listing.open_id, listing.end_seq, calendar.calendar_id)
            data = {"has_more": False, "page_token": "", "sync_token": token, "items": page}
        return _json_reply(200, {"code": 0, "msg": "success", "data": data})

    def _incremental_events_page(
        self, user: _User, calendar: _CalendarState, since_seq: int, page: list[_EventState]
    ) -> _Reply:
        """A page of changes with more to come and no page_token: continued by this page's sync_token
        (standing for the last change it holds), or not at all."""
        token = ""
        if self.incremental_event_paging == "sync_token":
            token = "ListEventsSyncToken_" + secrets.token_urlsafe(24)
            seq = page[-1].changed_seq if page else since_seq
            self._sync_tokens[token] = _SyncPoint(user.open_id, seq, calendar.calendar_id)
        data = {"has_more": True, "page_token": "", "sync_token": token, "items": [dict(e.entry()) for e in page]}
        return _json_reply(200, {"code": 0, "msg": "success", "data": data})

    def _subscribe(self, call: _Call) -> _Reply:
        user = self._authenticated_user(call, scopes=CALENDAR_SCOPES)
        with self._lock:
            user.subscribed = True
        return _json_reply(200, {"code": 0, "msg": "success", "data": {}})

    def _unsubscribe(self, call: _Call) -> _Reply:
        user = self._authenticated_user(call, scopes=CALENDAR_SCOPES)
        with self._lock:
            user.subscribed = False
        return _json_reply(200, {"code": 0, "msg": "success", "data": {}})

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _bearer(headers: Mapping[str, str]) -> str | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return token

    def _authenticated_user(
        self,
        call: _Call,
        *,
        tenant_error: tuple[int, int, str] = (400, 99991663, "tenant access token not support"),
        scopes: tuple[str, ...] = (),
    ) -> _User:
        token = self._bearer(call.headers)
        if token is None:
            raise _api_error(
                400, 99991661, "Missing access token for authorization. Please make a request with token attached."
            )
        with self._lock:
            record = self._access_tokens.get(token)
            if record is None:
                raise _api_error(
                    400, 99991668, "Invalid access token for authorization. Please make a request with token attached."
                )
            if record.forced_expired or self._clock() >= record.expires_at:
                raise _api_error(400, 99991677, "token expire")
            if record.kind == "tenant" or record.open_id is None:
                raise _api_error(*tenant_error)
            if scopes and not record.scopes & set(scopes):
                raise _ApiError(self._scope_error(99991679, scopes, "Unauthorized. You do not have permission"))
            return self._user(record.open_id)

    @staticmethod
    def _page_size(raw: str | None) -> int:
        if raw is None or raw == "":
            return PAGE_SIZE_DEFAULT
        try:
            size = int(raw)
        except ValueError:
            size = -1
        if not PAGE_SIZE_MIN <= size <= PAGE_SIZE_MAX:
            raise _api_error(
                400,
                99992402,
                "field validation failed",
                error={
                    "field_violations": [
                        {
                            "field": "page_size",
                            "value": raw,
                            "description": f"page_size must be between {PAGE_SIZE_MIN} and {PAGE_SIZE_MAX}",
                        }
                    ]
                },
            )
        return size

    @staticmethod
    def _json_body(call: _Call, error: Callable[[], _ApiError]) -> dict[str, Any]:
        try:
            body = json.loads(call.body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise error() from None
        if not isinstance(body, dict):
            raise error()
        return body

    def _user(self, open_id: str) -> _User:
        user = self._users.get(open_id)
        if user is None:
            raise KeyError(f"unknown user {open_id}")
        return user

    def _live_event(self, open_id: str, calendar_id: str, event_id: str) -> _EventState:
        event = self._live_calendar(open_id, calendar_id).events.get(event_id)
        if event is None or event.deleted:
            raise KeyError(f"calendar {calendar_id} has no event {event_id}")
        return event

    def _live_calendar(self, open_id: str, calendar_id: str) -> _CalendarState:
        calendar = self._user(open_id).calendars.get(calendar_id)
        if calendar is None or calendar.deleted:
            raise KeyError(f"user {open_id} has no calendar {calendar_id}")
        return calendar

    @staticmethod
    def _grant_scopes(user: _User, scope: str) -> None:
        for name in scope.split():
            if name not in user.granted_scopes:
                user.granted_scopes.append(name)

    @staticmethod
    def _narrowed_scopes(granted: list[str], requested: Any) -> list[str]:
        if not requested:
            return list(granted)
        names = str(requested).split()
        if len(set(names)) != len(names):
            raise _oauth_error(20067, "duplicate scopes")
        if not set(names) <= set(granted):
            raise _oauth_error(20068, "scope not granted")
        return names

    def _issue_user_tokens(
        self, open_id: str, scopes: list[str], *, grant: int | None = None, with_refresh: bool = True
    ) -> dict[str, Any]:
        """A token pair; without ``grant`` it is a new consent (numbered), else a refresh within ``grant``."""
        now = self._clock()
        if grant is None:
            self._grants += 1
            grant = self._latest_grant[open_id] = self._grants
        access = _jwt_like_token()
        self._access_tokens[access] = _AccessToken(
            "user", open_id, now + self.access_token_ttl, scopes=frozenset(scopes), grant=grant
        )
        tokens: dict[str, Any] = {"code": 0, "access_token": access, "expires_in": self.access_token_ttl}
        if with_refresh and "offline_access" in scopes:
            refresh = _jwt_like_token()
            self._refresh_tokens[refresh] = _RefreshToken(
                open_id, scopes, now + self.refresh_token_ttl, access, grant=grant
            )
            tokens["refresh_token"] = refresh
            tokens["refresh_token_expires_in"] = self.refresh_token_ttl
        tokens["scope"] = " ".join(scopes)
        tokens["token_type"] = "Bearer"
        self._issued_user_tokens |= {access, tokens.get("refresh_token") or access}
        return tokens

    # -- push machinery -------------------------------------------------------------------------

    def _resolve_callback_url(self, callback_url: str | None) -> str:
        url = callback_url or self._callback_url
        if not url:
            raise ValueError("no callback URL: pass callback_url or call set_callback_url first")
        return url

    def _after_mutation(self, open_id: str) -> None:
        with self._lock:
            url = self._callback_url
            if not (url and self._auto_push and self._users[open_id].subscribed) or self._stopping.is_set():
                return
            self._pushes_in_flight += 1
        thread = threading.Thread(
            target=self._push_with_retries, args=(url, [open_id]), name="feishu-sim-push", daemon=True
        )
        thread.start()

    def _after_event_mutation(self, open_id: str, calendar_id: str, event_id: str, change_type: str) -> None:
        with self._lock:
            url = self._callback_url
            calendar = self._users[open_id].calendars[calendar_id]
            if not (url and self._auto_push and calendar.events_subscribed) or self._stopping.is_set():
                return
            payload = self.event_changed_payload(open_id, calendar_id, event_id=event_id, change_type=change_type)
            self._pushes_in_flight += 1
        threading.Thread(
            target=self._push_with_retries, args=(url, [open_id], payload), name="feishu-sim-push", daemon=True
        ).start()

    def _push_with_retries(self, url: str, open_ids: list[str], payload: dict[str, Any] | None = None) -> None:
        try:
            payload = payload or self.calendar_changed_payload(open_ids)
            for attempt, wait in enumerate((0.0, *self.push_retry_delays), start=1):
                if wait and self._stopping.wait(wait):
                    return
                if self._stopping.is_set():
                    return
                headers, body = self.build_callback_request(payload)
                try:
                    response = self._post_event(url, payload, headers, body, attempt=attempt, timeout=self.push_timeout)
                except requests.RequestException:
                    continue
                if response.status_code == 200:
                    return
        finally:
            with self._pushes_idle:
                self._pushes_in_flight -= 1
                self._pushes_idle.notify_all()

    def _post_event(
        self,
        url: str,
        payload: dict[str, Any],
        headers: dict[str, str],
        body: bytes,
        *,
        attempt: int,
        timeout: float,
    ) -> requests.Response:
        header = payload.get("header", {})
        delivery_id = str(header.get("event_id", ""))
        event_type = str(header.get("event_type") or payload.get("type", ""))
        open_ids = tuple(u.get("open_id", "") for u in payload.get("event", {}).get("user_id_list", []))
        status: int | None = None
        error: str | None = None
        try:
            response = requests.post(url, data=body, headers=headers, timeout=timeout)
            status = response.status_code
            return response
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            delivery = Delivery(delivery_id, event_type, open_ids, attempt, status, error, time.time(), url)
            with self._lock:
                self.deliveries.append(delivery)

    # -- admin API ------------------------------------------------------------------------------

    def _handle_admin(self, call: _Call) -> _Reply:
        parts = call.path[len(ADMIN_PREFIX) :].strip("/").split("/")
        result: Any
        try:
            body = (
                self._json_body(call, lambda: _api_error(400, 400, "body must be a JSON object")) if call.body else {}
            )
            match (call.method, parts):
                case ("GET", ["users"]):
                    result = self.users()
                case ("POST", ["users"]):
                    self.add_user(str(body["open_id"]), str(body.get("name", body["open_id"])))
                    result = {"open_id": body["open_id"]}
                case ("GET", ["users", open_id, "calendars"]):
                    result = self.calendars(open_id)
                case ("POST", ["users", open_id, "calendars"]):
                    result = {"calendar_id": self.create_calendar(open_id, **body)}
                case ("PATCH", ["users", open_id, "calendars", calendar_id]):
                    self.update_calendar(open_id, calendar_id, **body)
                    result = {}
                case ("DELETE", ["users", open_id, "calendars", calendar_id]):
                    self.delete_calendar(open_id, calendar_id)
                    result = {}
                case ("POST", ["expire-sync-tokens"]):
                    self.expire_sync_tokens(body.get("open_id"))
                    result = {}
                case ("POST", ["expire-access-tokens"]):
                    self.expire_access_tokens(body.get("open_id"))
                    result = {}
                case ("POST", ["consent-user"]):
                    self.set_consent_user(body.get("open_id"), deny=bool(body.get("deny", False)))
                    result = {}
                case ("GET", ["deliveries"]):
                    result = [vars(d) for d in list(self.deliveries)]
                case _:
                    return _json_reply(404, {"error": f"no admin route {call.method} {call.path}"})
        except _ApiError as error:
            return error.reply
        except KeyError as exc:
            return _json_reply(404, {"error": str(exc.args[0] if exc.args else exc)})
        except (ValueError, TypeError) as exc:
            return _json_reply(400, {"error": str(exc)})
        return _json_reply(200, result)


# ---------------------------------------------------------------------------------------------
# HTTP server plumbing


class _SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], simulator: FeishuSimulator) -> None:
        super().__init__(address, _SimulatorRequestHandler)
        self.simulator = simulator


class _SimulatorRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server_version = "FeishuSimulator/1.0"

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        server = self.server
        assert isinstance(server, _SimulatorServer)
        length = int(self.headers.get("Content-Length") or "0")
        body = self.rfile.read(length) if length > 0 else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = server.simulator._dispatch(self.command, self.path, headers, body)
        if reply is None:
            self.close_connection = True
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:  # the client gave up waiting (a late answer): nothing to deliver it to
            self.close_connection = True

    @override
    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


class InProcessSession(requests.Session):
    """A ``requests.Session`` answered by the simulator in the calling thread, without HTTP: the request is
    prepared as ``requests`` would send it and the answer built as it would arrive. The simulator's answer
    time passes in its own (injectable) ``sleep``; an answer that took longer than the read timeout raises
    ``ReadTimeout`` (after the whole answer time), and a dropped connection ``ConnectionError``."""

    def __init__(self, simulator: FeishuSimulator) -> None:
        super().__init__()
        self._simulator = simulator

    @override
    def request(
        self,
        method: str | bytes,
        url: str | bytes,
        params: Any = None,
        data: Any = None,
        headers: Any = None,
        cookies: Any = None,
        files: Any = None,
        auth: Any = None,
        timeout: Any = None,
        allow_redirects: bool = True,
        proxies: Any = None,
        hooks: Any = None,
        stream: bool | None = None,
        verify: Any = None,
        cert: Any = None,
        json: Any = None,
    ) -> requests.Response:
        """Answer one request in-process (``cookies`` … ``cert`` are accepted and ignored)."""
        del cookies, files, auth, allow_redirects, proxies, hooks, stream, verify, cert
        method_name = method.decode() if isinstance(method, bytes) else method
        address = url.decode() if isinstance(url, bytes) else url
        prepared = requests.Request(
            method_name.upper(), address, params=params, data=data, headers=headers, json=json
        ).prepare()
        body = prepared.body or b""
        raw_body = body.encode("utf-8") if isinstance(body, str) else body
        sent_headers = {name.lower(): value for name, value in prepared.headers.items()}
        simulator = self._simulator
        started = simulator._monotonic()
        reply = simulator._dispatch(prepared.method or "GET", prepared.path_url, sent_headers, raw_body)
        if reply is None:
            raise requests.ConnectionError("Connection aborted: the server closed the connection without answering")
        read_timeout = timeout[1] if isinstance(timeout, tuple) else timeout
        if read_timeout is not None and simulator._monotonic() - started > read_timeout:
            raise requests.ReadTimeout(f"no answer within the read timeout ({read_timeout} s)")
        response = requests.Response()
        response.status_code = reply.status
        response._content = reply.body
        response.headers = CaseInsensitiveDict({**dict(reply.headers), "Content-Type": reply.content_type})
        response.url = prepared.url or address
        response.request = prepared
        response.encoding = "utf-8"
        return response


# ---------------------------------------------------------------------------------------------
# Standalone entry point


def main(argv: list[str] | None = None) -> None:
    """Run the simulator standalone with one demo user until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m local.feishu_sim", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--callback-url", default=None, help="where to push calendar change events")
    parser.add_argument("--no-encrypt", action="store_true", help="push plaintext events (no encrypt key)")
    args = parser.parse_args(argv)

    simulator = FeishuSimulator(
        host=args.host, port=args.port, encrypt_key=None if args.no_encrypt else "sim-encrypt-key"
    )
    simulator.add_user("ou_demo", "Demo User")
    simulator.create_calendar("ou_demo", summary="Team", description="shared team calendar")
    simulator.create_calendar("ou_demo", summary="Holidays", permissions="public", color=-11034625)
    simulator.set_consent_user("ou_demo")
    if args.callback_url:
        simulator.set_callback_url(args.callback_url)
    with simulator:
        print(f"Feishu simulator on {simulator.url}", flush=True)
        print(
            f"  app_id={simulator.app_id} app_secret={simulator.app_secret} "
            f"encrypt_key={simulator.encrypt_key} verification_token={simulator.verification_token}",
            flush=True,
        )
        print("  demo user ou_demo; admin API under /_sim/ (Ctrl-C to stop)", flush=True)
        stop_requested = threading.Event()

        def request_stop(_signum: int, _frame: FrameType | None) -> None:
            stop_requested.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        while not stop_requested.wait(1.0):
            pass


if __name__ == "__main__":
    main()
