"""An HTTP front on 127.0.0.1 that behaves like an API Gateway HTTP API (payload format 2.0).

Requests to the template's routes become 2.0 events exactly as API Gateway builds them (lowercased
header names, duplicates comma-joined, cookies split out, base64 for binary bodies); the function's
result is mapped back by the 2.0 rules. Errors look like API Gateway's own, including the 30 s
integration timeout (503) and the 10 MB request limit (413).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from local.http import LoopbackHandler, serve
from local.lambdas import Invocation
from local.template import Route

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
INTEGRATION_TIMEOUT_SECONDS = 30.0
# HTTP APIs pass only these bodies as text; everything else, a missing content type and (unlike what
# one might expect) application/x-www-form-urlencoded included, arrives base64-encoded.
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


def build_event(
    route: Route,
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    path_parameters: dict[str, str],
) -> dict[str, Any]:
    """The API Gateway HTTP API (2.0) event for one request."""
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies += [c.strip() for c in value.split(";") if c.strip()]
            continue
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    host = joined.get("host", "127.0.0.1")
    forwarded = joined.get("x-forwarded-for")
    joined["x-forwarded-for"] = f"{forwarded}, {source_ip}" if forwarded else source_ip
    joined["x-forwarded-proto"] = "http"
    joined["x-forwarded-port"] = host.rsplit(":", 1)[1] if ":" in host else "80"
    joined.setdefault("x-amzn-trace-id", f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}")
    route_key = f"{route.method} {route.path}" if route.method != "ANY" else f"ANY {route.path}"
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": joined,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": host.split(":")[0],
            "domainPrefix": host.split(".")[0].split(":")[0],
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": joined.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if raw_query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    if path_parameters:
        event["pathParameters"] = path_parameters
    if body:
        content_type = joined.get("content-type", "").strip().lower()
        try:
            text = body.decode("utf-8")
            textual = content_type.startswith(TEXT_TYPES)
        except UnicodeDecodeError:
            textual = False
        if textual:
            event["body"] = text
        else:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    return event


def _message(status: int, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json")], json.dumps({"message": message}).encode()


def map_result(result: Invocation) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body for a function's result, by the payload 2.0 rules.

    A function error (or timeout) and a malformed response are API Gateway's 500. A result without
    ``statusCode`` is a 200 JSON response of that result (a JSON string is the body itself).
    ``multiValueHeaders`` belongs to format 1.0 and is ignored, as API Gateway does for 2.0.
    """
    if result.error is not None:
        return _message(500, "Internal Server Error")
    payload = result.payload
    if not isinstance(payload, dict) or "statusCode" not in payload:
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        return 200, [("Content-Type", "application/json")], body
    try:
        status = int(payload["statusCode"])
        headers = [(str(k), str(v)) for k, v in (payload.get("headers") or {}).items()]
        headers += [("Set-Cookie", str(c)) for c in payload.get("cookies") or []]
        text = payload.get("body")
        if text is not None and not isinstance(text, str):
            raise TypeError("body must be a string")
        raw = base64.b64decode(text or "", validate=True) if payload.get("isBase64Encoded") else (text or "").encode()
    except (TypeError, ValueError, AttributeError):
        return _message(500, "Internal Server Error")
    if not 100 <= status <= 599:
        return _message(500, "Internal Server Error")
    return status, headers, raw


def _specificity(route: Route) -> tuple[bool, int, bool]:
    """Sort key: exact paths before parameters, parameters before greedy ones, methods before ANY."""
    return ("+}" in route.path, route.path.count("{"), route.method == "ANY")


class ApiGateway:
    """The HTTP front: ``routes`` are served by ``invoke(function_logical_id, event)``."""

    def __init__(
        self,
        routes: list[Route],
        invoke: Callable[[str, dict[str, Any]], Invocation],
        port: int = 0,
        *,
        integration_timeout: float = INTEGRATION_TIMEOUT_SECONDS,
    ) -> None:
        self.routes = sorted(routes, key=_specificity)
        self._invoke = invoke
        self._port = port
        self.integration_timeout = integration_timeout

    def call(self, function: str, event: dict[str, Any]) -> Invocation | None:
        """Invoke ``function``; None when it did not answer within the integration timeout (it keeps
        running, as a Lambda invocation does after API Gateway gave up on it)."""
        done: list[Invocation] = []

        def run() -> None:
            try:
                done.append(self._invoke(function, event))
            except Exception as exc:  # the host failed: a Lambda service error, a 500 for the caller
                done.append(Invocation(None, {"errorType": type(exc).__name__, "errorMessage": str(exc)}, 0))

        worker = threading.Thread(target=run, daemon=True, name=f"integration-{function}")
        worker.start()
        worker.join(self.integration_timeout)
        return done[0] if done else None

    def start(self) -> ApiGateway:
        """Serve from a background thread."""
        self._server = serve(self._handler_class(), self._port, "api-gateway")
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(LoopbackHandler):
            def _message(self, status: int, message: str) -> None:
                self.send(status, [("Content-Type", "application/json")], json.dumps({"message": message}).encode())

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_PAYLOAD_BYTES:
                    self._message(413, "Request Entity Too Large")
                    self.close_connection = True
                    return
                body = self.rfile.read(length) if length else b""
                for route in gateway.routes:
                    params = route.match(self.command, parts.path)
                    if params is not None:
                        break
                else:
                    self._message(404, "Not Found")
                    return
                event = build_event(
                    route,
                    method=self.command,
                    raw_path=parts.path,
                    raw_query=parts.query,
                    headers=list(self.headers.items()),
                    body=body,
                    source_ip=self.client_address[0],
                    path_parameters=params,
                )
                result = gateway.call(route.function, event)
                self.send(*(map_result(result) if result is not None else _message(503, "Service Unavailable")))

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

        return Handler
