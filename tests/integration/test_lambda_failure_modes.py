"""How the callback behaves when an invocation dies mid-way (Lambda timeout or crash)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from feishu_mirror import composition
from feishu_mirror.config import Settings
from local.feishu_sim import FeishuSimulator
from tests.integration.callback_handler import UNREACHABLE, callback_app, signed_delivery
from tests.integration.harness import Harness
from tests.lambda_handlers import FakeContext

pytestmark = pytest.mark.integration


class LambdaKilled(BaseException):
    """The invocation was killed: no cleanup runs (unlike an ordinary exception)."""


@pytest.fixture
def app(
    harness: Harness, settings: Settings, sim: FeishuSimulator, dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The callback handler against this test's tables and simulator; nothing listens on its Lambda
    endpoint, so invokes fail and users stay due."""
    with callback_app(
        monkeypatch, settings=settings, sim=sim, dynamodb_endpoint=dynamodb_endpoint, lambda_endpoint=UNREACHABLE
    ) as module:
        yield module


def delivery(sim: FeishuSimulator, open_id: str, delivery_id: str) -> dict[str, Any]:
    return signed_delivery(sim, sim.calendar_changed_payload([open_id], delivery_id=delivery_id))


def test_a_delivery_killed_mid_way_is_retried_not_lost(
    app: ModuleType, harness: Harness, sim: FeishuSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a user, and a first delivery whose invocation dies inside the dispatch (2 s before its timeout)
    open_id = harness.onboard("ou_killed")
    harness.set_user(open_id, due_at=int(time.time()) + 3600)
    event = delivery(sim, open_id, "evt-killed")
    dispatcher = composition.for_lambda(app.settings).pings

    def die(*_args: Any, **_kwargs: Any) -> None:
        raise LambdaKilled

    with monkeypatch.context() as patched:
        patched.setattr(dispatcher, "dispatch", die)
        with pytest.raises(LambdaKilled):
            app.handler(event, FakeContext(remaining_ms=2000))
    # WHEN Feishu redelivers while the dead invocation's record is still "in progress"
    early = app.handler(delivery(sim, open_id, "evt-killed"), FakeContext())
    # THEN the answer is not a 200, so Feishu keeps retrying; the in-progress record expires with the
    # dead invocation's timeout, not after the 24 h dedup window
    assert early["statusCode"] == 409
    items = harness.client.scan(TableName=harness.settings.idempotency_table)["Items"]
    assert len(items) == 1
    assert int(items[0]["in_progress_expiration"]["N"]) <= int(time.time() * 1000) + 2500
    # WHEN Feishu's next retry comes after that timeout THEN it is processed and the user becomes due
    time.sleep(2.1)
    late = app.handler(delivery(sim, open_id, "evt-killed"), FakeContext())
    assert late["statusCode"] == 200
    assert json.loads(late["body"])["msg"] == "success"
    assert harness.user(open_id)["dirty_seq"] == 1
    assert harness.user(open_id)["due_at"] <= int(time.time()) + 130
