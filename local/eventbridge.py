"""A local EventBridge: the ``PutEvents`` API on loopback, recording every event it accepts.

It speaks the wire format boto3 uses (AWS JSON 1.1, ``X-Amz-Target: AWSEvents.PutEvents``), so the
same code runs against it with ``AWS_ENDPOINT_URL_EVENTBRIDGE``. Entries are validated as EventBridge
does (1–10 entries, 256 KB in all, ``Source``/``DetailType``/``Detail`` present, ``Detail`` a JSON
object) and recorded per bus as the event a rule's target would receive. Like EventBridge, an unknown
bus name is accepted (and recorded under that name). Tests can make it refuse chosen entries
(``fail_entries``) or whole requests (``fail_requests``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from local.http import LoopbackHandler, serve
from local.template import ACCOUNT, REGION

MAX_ENTRIES = 10
MAX_REQUEST_BYTES = 256 * 1024
CONTENT_TYPE = "application/x-amz-json-1.1"

EventPredicate = Callable[[dict[str, Any]], bool]


@dataclass
class _FailureRule:
    matches: EventPredicate
    remaining: int
    code: str
    message: str


def bus_name(name_or_arn: str | None) -> str:
    """The bus name of an ``EventBusName`` (a name or an ARN); ``default`` when absent."""
    if not name_or_arn:
        return "default"
    return name_or_arn.split(":event-bus/", 1)[-1]


def _entry_size(entry: dict[str, Any]) -> int:
    size = sum(len(str(entry.get(name) or "").encode("utf-8")) for name in ("Source", "DetailType", "Detail"))
    size += sum(len(str(resource).encode("utf-8")) for resource in entry.get("Resources") or [])
    return size + (14 if entry.get("Time") is not None else 0)


class LocalEventBridge:
    """The PutEvents endpoint and what was put on each bus."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Condition()
        self._log: list[tuple[str, dict[str, Any]]] = []  # (bus name, event), in arrival order
        self._rules: list[_FailureRule] = []
        self._failing_requests = 0
        self._refused: list[dict[str, Any]] = []
        self.requests = 0
        self._server = serve(self._handler_class(), port, name="eventbridge")
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------------ inspection
    def events(self, *buses: str) -> list[dict[str, Any]]:
        """The events accepted on these buses (names or ARNs; every bus when none), in arrival order."""
        wanted = {bus_name(bus) for bus in buses}
        with self._lock:
            return [event for name, event in self._log if not wanted or name in wanted]

    def wait_for(self, condition: Callable[[list[dict[str, Any]]], bool], *buses: str, timeout: float = 30) -> bool:
        """Wait until ``condition`` holds for the events of these buses (every bus when none)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition(self.events(*buses)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def refused(self) -> list[dict[str, Any]]:
        """The events ``fail_entries`` made it refuse, in order."""
        with self._lock:
            return list(self._refused)

    def clear(self) -> None:
        """Forget the recorded events and any failure still armed."""
        with self._lock:
            self._log.clear()
            self._refused.clear()
            self._rules.clear()
            self._failing_requests = 0

    # ------------------------------------------------------------------ fault injection
    def fail_entries(
        self,
        matches: EventPredicate = lambda _event: True,
        *,
        times: int = 1,
        code: str = "InternalFailure",
        message: str = "Internal service error.",
    ) -> None:
        """Refuse the next ``times`` entries whose event matches (``FailedEntryCount`` and ``ErrorCode``)."""
        with self._lock:
            self._rules.append(_FailureRule(matches, times, code, message))

    def fail_requests(self, times: int = 1) -> None:
        """Answer the next ``times`` requests with HTTP 500 ``InternalException`` (boto3 retries those)."""
        with self._lock:
            self._failing_requests += times

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ the API
    def _refusal(self, event: dict[str, Any]) -> _FailureRule | None:
        for rule in self._rules:
            if rule.remaining > 0 and rule.matches(event):
                rule.remaining -= 1
                return rule
        return None

    def put_events(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One ``PutEvents`` call: the HTTP status and the JSON answer."""
        with self._lock:
            self.requests += 1
            if self._failing_requests:
                self._failing_requests -= 1
                return 500, {"__type": "InternalException", "message": "Internal service error."}
        entries = request.get("Entries")
        if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_ENTRIES:
            return 400, {
                "__type": "ValidationException",
                "message": "1 validation error detected: Value at 'entries' failed to satisfy constraint: "
                "Member must have length less than or equal to 10",
            }
        if sum(_entry_size(entry) for entry in entries if isinstance(entry, dict)) > MAX_REQUEST_BYTES:
            return 400, {
                "__type": "ValidationException",
                "message": "Total size of the entries in the request is over the limit.",
            }
        results: list[dict[str, str]] = []
        with self._lock:
            for entry in entries:
                result = self._accept(entry if isinstance(entry, dict) else {})
                results.append(result)
            self._lock.notify_all()
        failed = sum(1 for result in results if "ErrorCode" in result)
        return 200, {"FailedEntryCount": failed, "Entries": results}

    def _accept(self, entry: dict[str, Any]) -> dict[str, str]:
        missing = [name for name in ("Source", "DetailType", "Detail") if not entry.get(name)]
        if missing:
            return {
                "ErrorCode": "InvalidArgument",
                "ErrorMessage": f"Parameter(s) {', '.join(missing)} must be specified.",
            }
        try:
            detail = json.loads(entry["Detail"])
        except (TypeError, ValueError):
            detail = None
        if not isinstance(detail, dict):
            return {"ErrorCode": "MalformedDetail", "ErrorMessage": "Detail is malformed."}
        moment = entry.get("Time")
        when = time.gmtime(float(moment)) if isinstance(moment, int | float) else time.gmtime()
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": entry["DetailType"],
            "source": entry["Source"],
            "account": ACCOUNT,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", when),
            "region": REGION,
            "resources": list(entry.get("Resources") or []),
            "detail": detail,
        }
        rule = self._refusal(event)
        if rule is not None:
            self._refused.append(event)
            return {"ErrorCode": rule.code, "ErrorMessage": rule.message}
        self._log.append((bus_name(entry.get("EventBusName")), event))
        return {"EventId": event["id"]}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        bridge = self

        class Handler(LoopbackHandler):
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                headers = [("Content-Type", CONTENT_TYPE), ("x-amzn-RequestId", str(uuid.uuid4()))]
                if status >= 400:
                    headers.append(("x-amzn-ErrorType", str(body.get("__type", ""))))
                self.send(status, headers, json.dumps(body).encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                target = self.headers.get("X-Amz-Target", "")
                if target != "AWSEvents.PutEvents":
                    self._answer(400, {"__type": "UnknownOperationException", "message": f"Unknown target {target}"})
                    return
                try:
                    request = json.loads(raw or b"{}")
                except ValueError:
                    self._answer(400, {"__type": "SerializationException", "message": "Malformed JSON"})
                    return
                status, body = bridge.put_events(request if isinstance(request, dict) else {})
                self._answer(status, body)

        return Handler
