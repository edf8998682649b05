"""The real callback handler fails closed: a deployment whose credentials lack the Encrypt Key or the
Verification Token refuses every request with a 503 and counts it for the configuration alarm."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from local.feishu_sim import FeishuSimulator
from tests import fuzzing
from tests.integration.callback_handler import (
    LambdaRecorder,
    api_event,
    reply_body,
    signed_delivery,
    table_snapshot,
)
from tests.integration.harness import Harness
from tests.lambda_handlers import FakeContext

pytestmark = pytest.mark.integration


@pytest.fixture(params=["FEISHU_ENCRYPT_KEY", "FEISHU_VERIFICATION_TOKEN"])
def callback_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """A deployment whose secret lacks one of the two values (set but empty)."""
    return {str(request.param): ""}


def test_a_deployment_without_its_encrypt_key_or_verification_token_refuses_everything(
    app: ModuleType,
    harness: Harness,
    sim: FeishuSimulator,
    recorder: LambdaRecorder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a user and the tables as they are
    open_id = harness.onboard("ou_unconfigured")
    before = table_snapshot(harness.client, harness.settings)
    payload = sim.calendar_changed_payload([open_id])
    challenge = {"type": "url_verification", "challenge": "c-1", "token": sim.verification_token}
    requests = [
        signed_delivery(sim, payload),  # genuine: encrypted and signed
        api_event({}, fuzzing.as_plaintext(payload)),  # what an app without an Encrypt Key sends
        api_event({}, fuzzing.as_plaintext(challenge)),
        signed_delivery(sim, challenge),
    ]
    capsys.readouterr()
    # WHEN Feishu delivers events and challenges to it
    replies = [app.handler(request, FakeContext()) for request in requests]
    # THEN every one is refused with a 503 (Feishu retries; nothing unsigned or unchecked is accepted)
    assert [(r["statusCode"], reply_body(r)) for r in replies] == [(503, {"msg": "not configured"})] * len(requests)
    # AND nothing was written or started
    assert table_snapshot(harness.client, harness.settings) == before
    assert recorder.invocations == []
    # AND each refusal was counted for the configuration alarm
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    counted = [line["CallbackConfigurationErrors"] for line in emf if "CallbackConfigurationErrors" in line]
    assert sum(sum(v) if isinstance(v, list) else v for v in counted) == len(requests)
