"""Verifying and parsing Feishu event callbacks (the ``POST /feishu/events`` body).

Order of checks, cheapest and most decisive first: body size, JSON shape, signature and timestamp
(over the raw bytes, before any decryption), decryption, verification token (constant time), app id,
then the event itself. Every refusal is a ``CallbackRejected`` with a short reason and a 4xx status.
Configuration fails closed: without an Encrypt Key and a Verification Token there is no verifier
(``ConfigError``), so nothing unsigned or unchecked is ever accepted. Plaintext bodies are refused, so
the challenge path cannot be used to get around verification; only ``url_verification`` may arrive
without signature headers.

The timestamp window is wide on purpose (``docs/callback-security.md``): whether Feishu re-signs a
retried delivery is not documented, so a retry carrying its first attempt's timestamp must still pass
within Feishu's ~7.1 h retry schedule. A replay inside the window is a duplicate delivery id
(``header.event_id``), answered from the idempotency record (kept longer than the window), so it costs
at most one sync.

Feishu calls a push an "event"; here it is a *notice* (``ChangeNotice``: these users' calendars, or one
calendar's events, changed) with a *delivery id* (``header.event_id``), so that ``event_id`` keeps
meaning what it means everywhere else in the mirror: a calendar event's (日程) id.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from feishu_mirror import crypto
from feishu_mirror.errors import CallbackRejected, ConfigError
from feishu_mirror.identifiers import MAX_DELIVERY_ID_LENGTH, is_calendar_id, is_delivery_id, is_open_id

CALENDAR_CHANGED = "calendar.calendar.changed_v4"
EVENT_CHANGED = "calendar.calendar.event.changed_v4"
MAX_BODY_BYTES = 128 * 1024
MAX_CHALLENGE_LENGTH = 1024
MAX_USERS_PER_EVENT = 1000
# Feishu retries a failed delivery after 15 s, 5 min, 1 h and 6 h (~7.1 h in all, each attempt given 3 s):
# a retry that carries the first attempt's timestamp is that old at most. The default accepted age adds
# most of an hour for Feishu's queueing and clock differences; a timestamp ahead of our clock is
# accepted only by a clock difference.
FEISHU_RETRY_SPAN_SECONDS = 15 + 5 * 60 + 3600 + 6 * 3600
DEFAULT_MAX_AGE_SECONDS = 8 * 3600
DEFAULT_MAX_AHEAD_SECONDS = 300
TIMESTAMP_HEADER = "x-lark-request-timestamp"
NONCE_HEADER = "x-lark-request-nonce"
SIGNATURE_HEADER = "x-lark-signature"


@dataclass(frozen=True, slots=True)
class Challenge:
    """A ``url_verification`` request: answer ``{"challenge": ...}`` at once."""

    challenge: str


@dataclass(frozen=True, slots=True)
class ChangeNotice:
    """A verified push saying what changed: these users' calendar lists (``calendar.calendar.changed_v4``),
    or the events of ``calendar_id`` (``calendar.calendar.event.changed_v4``). ``delivery_id`` is Feishu's
    ``header.event_id``: the push's own id, not a calendar event's."""

    delivery_id: str
    open_ids: tuple[str, ...]
    payload: dict[str, Any]
    calendar_id: str = ""


@dataclass(frozen=True, slots=True)
class IgnoredNotice:
    """A verified push the mirror does not act on (another event type, or no users)."""

    delivery_id: str
    event_type: str


Callback = Challenge | ChangeNotice | IgnoredNotice


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CallbackRejected(400, f"{what} must be a JSON object")
    return value


def _loggable(value: Any, limit: int) -> str:
    """``value`` as text that a log line can carry (lone surrogates replaced), cut to ``limit``."""
    return str(value)[:limit].encode("utf-8", "replace").decode("utf-8")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise CallbackRejected(400, f"{what} is not valid JSON") from exc
    return _object(value, what)


class CallbackVerifier:
    """Checks a raw callback request and returns what it asks for.

    ``encrypt_key`` and ``verification_token`` are both required (``ConfigError`` otherwise): an app
    without them would send unsigned plaintext, which is never accepted. ``app_id``, when given, must
    match ``header.app_id`` of v2 events. A signed timestamp may be up to ``max_skew_seconds`` old and
    ``max_ahead_seconds`` ahead of ``clock`` (unix seconds).
    """

    def __init__(
        self,
        *,
        encrypt_key: str,
        verification_token: str,
        app_id: str = "",
        max_skew_seconds: int = DEFAULT_MAX_AGE_SECONDS,
        max_ahead_seconds: int = DEFAULT_MAX_AHEAD_SECONDS,
        max_body_bytes: int = MAX_BODY_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        missing = [
            name
            for name, value in (("FEISHU_ENCRYPT_KEY", encrypt_key), ("FEISHU_VERIFICATION_TOKEN", verification_token))
            if not value
        ]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} missing: every Feishu callback is refused until set")
        self._encrypt_key = encrypt_key
        self._aes = crypto.aes_key(encrypt_key)
        self._token = verification_token.encode("utf-8")
        self._app_id = app_id
        self._max_age = max_skew_seconds
        self._max_ahead = max_ahead_seconds
        self._max_body = max_body_bytes
        self._clock = clock

    def verify(self, headers: Mapping[str, str], raw_body: bytes) -> Callback:
        """Verify one request (``headers`` with lowercase names) and parse it; raises ``CallbackRejected``."""
        if len(raw_body) > self._max_body:
            raise CallbackRejected(413, "body too large")
        if not raw_body.strip():
            raise CallbackRejected(400, "empty body")
        envelope = _json_object(raw_body, "body")
        signed = self._check_signature(headers, raw_body)
        payload = self._open(envelope)
        if payload.get("type") == "url_verification":
            return self._challenge(payload)
        if not signed:
            raise CallbackRejected(401, "missing signature headers")
        return self._event(payload)

    def _check_signature(self, headers: Mapping[str, str], raw_body: bytes) -> bool:
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        nonce = headers.get(NONCE_HEADER, "")
        received = headers.get(SIGNATURE_HEADER, "")
        if not (timestamp or nonce or received):
            return False
        if not (timestamp and nonce and received):
            raise CallbackRejected(401, "incomplete signature headers")
        try:
            expected = crypto.signature(timestamp, nonce, self._encrypt_key, raw_body)
        except UnicodeEncodeError as exc:  # a lone surrogate in a header: nothing Feishu could have signed
            raise CallbackRejected(401, "signature mismatch") from exc
        if not crypto.signature_matches(expected, received):
            raise CallbackRejected(401, "signature mismatch")
        try:
            sent_at = int(timestamp)
        except ValueError as exc:
            raise CallbackRejected(401, "timestamp is not an integer") from exc
        age = int(self._clock()) - sent_at  # in ints: a 400-digit timestamp cannot overflow
        if age > self._max_age or -age > self._max_ahead:
            raise CallbackRejected(401, "stale timestamp")
        return True

    def _open(self, envelope: dict[str, Any]) -> dict[str, Any]:
        encrypted = envelope.get("encrypt")
        if not isinstance(encrypted, str):
            raise CallbackRejected(400, "body must be encrypted")
        try:
            return _json_object(crypto.decrypt(self._aes, encrypted), "decrypted body")
        except (crypto.DecryptionError, CallbackRejected) as exc:
            # One answer for every way decryption can fail: unsigned bodies (url_verification) must
            # not become a padding oracle that tells a bad pad from bad JSON.
            raise CallbackRejected(400, "encrypt could not be decrypted to a JSON object") from exc

    def _check_token(self, token: Any) -> None:
        # surrogatepass: a lone surrogate (from a JSON "\ud800" escape) is a mismatch, not a crash
        if not isinstance(token, str) or not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self._token):
            raise CallbackRejected(401, "verification token mismatch")

    def _challenge(self, payload: dict[str, Any]) -> Challenge:
        self._check_token(payload.get("token"))
        challenge = payload.get("challenge")
        if not isinstance(challenge, str) or not challenge or len(challenge) > MAX_CHALLENGE_LENGTH:
            raise CallbackRejected(400, "challenge must be a non-empty string")
        return Challenge(challenge)

    def _event(self, payload: dict[str, Any]) -> ChangeNotice | IgnoredNotice:
        if payload.get("schema") != "2.0":
            if "uuid" in payload:  # schema 1.0: the mirror subscribes to no v1 event
                self._check_token(payload.get("token"))
                return IgnoredNotice(_loggable(payload["uuid"], MAX_DELIVERY_ID_LENGTH), "v1")
            raise CallbackRejected(400, "unrecognised payload (neither schema 2.0 nor url_verification)")
        header = _object(payload.get("header"), "header")
        self._check_token(header.get("token"))
        if self._app_id and header.get("app_id") != self._app_id:
            raise CallbackRejected(403, "event is for another app")
        delivery_id = header.get("event_id")
        if not is_delivery_id(delivery_id):
            raise CallbackRejected(400, "header.event_id must be a non-empty string")
        event_type = header.get("event_type")
        if not isinstance(event_type, str):
            raise CallbackRejected(400, "header.event_type must be a string")
        if event_type not in (CALENDAR_CHANGED, EVENT_CHANGED):
            return IgnoredNotice(delivery_id, _loggable(event_type, 100))
        event = _object(payload.get("event"), "event")
        open_ids = self._open_ids(event)
        calendar_id = ""
        if event_type == EVENT_CHANGED:
            raw_calendar_id = event.get("calendar_id")
            # printable too: the calendar_id is logged with the push
            if not (is_calendar_id(raw_calendar_id) and raw_calendar_id.isprintable()):
                raise CallbackRejected(400, "event.calendar_id must be a non-empty string")
            calendar_id = raw_calendar_id
        if not open_ids:
            return IgnoredNotice(delivery_id, event_type)
        return ChangeNotice(delivery_id, open_ids, payload, calendar_id)

    @staticmethod
    def _open_ids(event: dict[str, Any]) -> tuple[str, ...]:
        users = event.get("user_id_list")
        if not isinstance(users, list) or len(users) > MAX_USERS_PER_EVENT:
            raise CallbackRejected(400, "event.user_id_list must be a list of users")
        open_ids: dict[str, None] = {}
        for user in users:
            open_id = user.get("open_id") if isinstance(user, dict) else None
            if not is_open_id(open_id):
                raise CallbackRejected(400, "every entry of event.user_id_list needs an open_id")
            open_ids[open_id] = None
        return tuple(open_ids)
