"""Running the real callback handler (``functions/callback/app.py``) in-process against DynamoDB Local.

The handler module reads its settings at import, so it is imported fresh for each test
(``tests.lambda_handlers``), with the environment pointing at the test's tables, the simulator's
credentials and a Lambda endpoint of the test's choosing: a ``LambdaRecorder`` that counts the
asynchronous invokes, or a closed port.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from feishu_mirror.config import Settings
from feishu_mirror.dynamodb.values import plain
from local.feishu_sim import FeishuSimulator
from tests.lambda_handlers import handler_module

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused


class _RecorderHandler(BaseHTTPRequestHandler):
    server: _RecorderServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length) or b"null")
        with self.server.lock:
            self.server.invocations.append((self.path, self.headers.get("X-Amz-Invocation-Type", ""), payload))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _RecorderServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecorderHandler)
        self.lock = threading.Lock()
        self.invocations: list[tuple[str, str, Any]] = []


class LambdaRecorder:
    """A stand-in Lambda Invoke API: answers 202 and records each invocation (path, type, payload)."""

    def __init__(self) -> None:
        self._server = _RecorderServer()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def invocations(self) -> list[tuple[str, str, Any]]:
        with self._server.lock:
            return list(self._server.invocations)

    def payloads(self) -> list[Any]:
        """The payloads of the invocations so far."""
        return [payload for _, _, payload in self.invocations]

    def __enter__(self) -> LambdaRecorder:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def callback_app(
    monkeypatch: pytest.MonkeyPatch,
    *,
    settings: Settings,
    sim: FeishuSimulator,
    dynamodb_endpoint: str,
    lambda_endpoint: str,
    extra_env: dict[str, str] | None = None,
) -> Iterator[ModuleType]:
    """The callback handler module, imported fresh against these tables, credentials and endpoints."""
    env = {
        "USERS_TABLE": settings.users_table,
        "IDEMPOTENCY_TABLE": settings.idempotency_table,
        "SYNC_FUNCTION_NAME": "sync",
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint,
        "AWS_ENDPOINT_URL_LAMBDA": lambda_endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        **sim.app_environment(),
        **(extra_env or {}),
    }
    with handler_module("callback", monkeypatch, env) as module:
        yield module


def api_event(
    headers: dict[str, str] | None, body: bytes | str | None, *, base64_encoded: bool = False
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event for ``POST /feishu/events``."""
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "POST /feishu/events",
        "rawPath": "/feishu/events",
        "rawQueryString": "",
        "requestContext": {"http": {"method": "POST", "path": "/feishu/events"}, "domainName": "127.0.0.1"},
        "isBase64Encoded": base64_encoded,
    }
    if headers is not None:
        event["headers"] = headers
    if isinstance(body, bytes):
        event["body"] = base64.b64encode(body).decode() if base64_encoded else body.decode("utf-8", "surrogateescape")
    elif body is not None:
        event["body"] = body
    return event


def signed_delivery(sim: FeishuSimulator, payload: dict[str, Any], **build: Any) -> dict[str, Any]:
    """The API Gateway event of a push Feishu signs and encrypts (header names lower-cased, as API Gateway does)."""
    headers, body = sim.build_callback_request(payload, **build)
    return api_event({k.lower(): v for k, v in headers.items()}, body.decode())


def table_snapshot(client: DynamoDBClient, settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every item of every table of the test, as plain values, in a stable order."""
    tables = (
        settings.users_table,
        settings.idempotency_table,
        settings.calendars_table,
        settings.events_table,
        settings.event_listings_table,
        settings.oauth_state_table,
        settings.rate_limit_table,
    )
    snapshot: dict[str, list[dict[str, Any]]] = {}
    for table in tables:
        pages = client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
        items = [plain(item) for page in pages for item in page["Items"]]
        snapshot[table] = sorted(
            items, key=lambda item: json.dumps(item, sort_keys=True, default=repr)
        )  # repr: sealed tokens are Binary
    return snapshot


def reply_body(reply: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a handler reply (fails the test if it is not a JSON object)."""
    body = json.loads(reply["body"])
    assert isinstance(body, dict), reply
    return body
