"""How the callback behaves when an invocation dies mid-way (Lambda timeout or crash)."""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from feishu_mirror.config import Settings
from local.feishu_sim import FeishuSimulator
from local.stack import ROOT
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration


class LambdaKilled(BaseException):
    """The invocation was killed: no cleanup runs (unlike an ordinary exception)."""


@dataclass
class Context:
    remaining_ms: int = 10_000
    function_name: str = "callback"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:callback"
    aws_request_id: str = "request-1"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def callback_app(
    harness: Harness, settings: Settings, sim: FeishuSimulator, dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The callback handler module, imported fresh against this test's tables and simulator."""
    env = {
        "USERS_TABLE": settings.users_table,
        "IDEMPOTENCY_TABLE": settings.idempotency_table,
        "SYNC_FUNCTION_NAME": "sync",
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint,
        "AWS_ENDPOINT_URL_LAMBDA": "http://127.0.0.1:9",  # nothing listens: invokes fail, users stay due
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "FEISHU_APP_ID": sim.app_id,
        "FEISHU_APP_SECRET": sim.app_secret,
        "FEISHU_ENCRYPT_KEY": sim.encrypt_key or "",
        "FEISHU_VERIFICATION_TOKEN": sim.verification_token,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(ROOT / "functions" / "callback"))
    sys.modules.pop("app", None)
    from feishu_mirror import wiring  # noqa: PLC0415

    wiring.dynamodb.cache_clear()
    wiring.lambda_client.cache_clear()
    wiring.pings.cache_clear()
    module = importlib.import_module("app")
    yield module
    sys.modules.pop("app", None)
    wiring.dynamodb.cache_clear()
    wiring.lambda_client.cache_clear()
    wiring.pings.cache_clear()


def delivery(sim: FeishuSimulator, open_id: str, delivery_id: str) -> dict[str, Any]:
    headers, body = sim.build_callback_request(sim.calendar_changed_payload([open_id], delivery_id=delivery_id))
    return {"headers": {k.lower(): v for k, v in headers.items()}, "body": body.decode(), "isBase64Encoded": False}


def test_a_delivery_killed_mid_way_is_retried_not_lost(
    callback_app: ModuleType, harness: Harness, sim: FeishuSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a user, and a first delivery whose invocation dies inside the dispatch (2 s before its timeout)
    open_id = harness.onboard("ou_killed")
    harness.set_user(open_id, due_at=int(time.time()) + 3600)
    event = delivery(sim, open_id, "evt-killed")
    from feishu_mirror import wiring  # noqa: PLC0415

    dispatcher = wiring.pings(callback_app.settings)

    def die(*_args: Any, **_kwargs: Any) -> None:
        raise LambdaKilled

    with monkeypatch.context() as patched:
        patched.setattr(dispatcher, "dispatch", die)
        with pytest.raises(LambdaKilled):
            callback_app.handler(event, Context(remaining_ms=2000))
    # WHEN Feishu redelivers while the dead invocation's record is still "in progress"
    early = callback_app.handler(delivery(sim, open_id, "evt-killed"), Context())
    # THEN the answer is not a 200, so Feishu keeps retrying; the in-progress record expires with the
    # dead invocation's timeout, not after the 24 h dedup window
    assert early["statusCode"] == 409
    items = harness.client.scan(TableName=harness.settings.idempotency_table)["Items"]
    assert len(items) == 1
    assert int(items[0]["in_progress_expiration"]["N"]) <= int(time.time() * 1000) + 2500
    # WHEN Feishu's next retry comes after that timeout THEN it is processed and the user becomes due
    time.sleep(2.1)
    late = callback_app.handler(delivery(sim, open_id, "evt-killed"), Context())
    assert late["statusCode"] == 200
    assert json.loads(late["body"])["msg"] == "success"
    assert harness.user(open_id)["dirty_seq"] == 1
    assert harness.user(open_id)["due_at"] <= int(time.time()) + 130
