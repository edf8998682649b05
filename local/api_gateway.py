"""An HTTP front on 127.0.0.1 that behaves like an API Gateway HTTP API (payload format 2.0).

Requests to the template's routes become 2.0 events exactly as API Gateway builds them (lowercased
header names, duplicates comma-joined, cookies split out, base64 for binary bodies); the function's
result is mapped back by the 2.0 rules. Errors look like API Gateway's own.
"""

from __future__ import annotations

import base64
import json
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
TEXT_TYPES = (
    "text/",
    "application/json",
    "application/x-www-form-urlencoded",
    "application/xml",
    "application/javascript",
)


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
    joined.setdefault("x-forwarded-for", source_ip)
    joined["x-forwarded-proto"] = "http"
    joined["x-forwarded-port"] = host.rsplit(":", 1)[1] if ":" in host else "80"
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
        content_type = joined.get("content-type", "").lower()
        try:
            text = body.decode("utf-8")
            textual = not content_type or content_type.startswith(TEXT_TYPES)
        except UnicodeDecodeError:
            textual = False
        if textual:
            event["body"] = text
        else:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    return event


def map_result(result: Invocation) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body for a function's result, by the payload 2.0 rules."""
    if result.error is not None:
        return 500, [("Content-Type", "application/json")], b'{"message":"Internal Server Error"}'
    payload = result.payload
    if not isinstance(payload, dict) or "statusCode" not in payload:
        return 200, [("Content-Type", "application/json")], json.dumps(payload).encode()
    headers = [(str(k), str(v)) for k, v in (payload.get("headers") or {}).items()]
    for name, values in (payload.get("multiValueHeaders") or {}).items():
        headers += [(str(name), str(v)) for v in values]
    headers += [("Set-Cookie", str(c)) for c in payload.get("cookies") or []]
    body = payload.get("body") or ""
    raw = base64.b64decode(body) if payload.get("isBase64Encoded") else str(body).encode("utf-8")
    return int(payload["statusCode"]), headers, raw


class ApiGateway:
    """The HTTP front: ``routes`` are served by ``invoke(function_logical_id, event)``."""

    def __init__(self, routes: list[Route], invoke: Callable[[str, dict[str, Any]], Invocation], port: int = 0) -> None:
        self.routes = routes
        self._invoke = invoke
        self._port = port

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
                started = time.monotonic()
                result = gateway._invoke(route.function, event)
                if time.monotonic() - started > 30:
                    self._message(503, "Service Unavailable")
                    return
                self.send(*map_result(result))

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

        return Handler
