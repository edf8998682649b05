"""The callback with its credentials in Secrets Manager, as deployed (``FEISHU_SECRET_ARN``, no
``FEISHU_APP_ID``), against a local stand-in that answers ``GetSecretValue`` like the service."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import ModuleType

import pytest
from aws_lambda_powertools.utilities import parameters

from local.feishu_sim import FeishuSimulator
from local.secrets_manager import SecretsManagerStandIn
from tests.integration.callback_handler import (
    LambdaRecorder,
    reply_body,
    signed_delivery,
)
from tests.integration.harness import Harness
from tests.lambda_handlers import FakeContext

pytestmark = pytest.mark.integration


@pytest.fixture
def secrets(sim: FeishuSimulator) -> Iterator[SecretsManagerStandIn]:
    """Secrets Manager holding this simulator's app credentials under a fresh name."""
    credentials = {
        "FEISHU_APP_ID": sim.app_id,
        "FEISHU_APP_SECRET": sim.app_secret,
        "FEISHU_ENCRYPT_KEY": sim.encrypt_key,
        "FEISHU_VERIFICATION_TOKEN": sim.verification_token,
    }
    with SecretsManagerStandIn({f"feishu-{uuid.uuid4().hex[:8]}": credentials}) as stand_in:
        yield stand_in
    parameters.clear_caches()  # type: ignore[no-untyped-call]  # Powertools keeps one provider (client, cache)


@pytest.fixture
def secret_arn(secrets: SecretsManagerStandIn) -> str:
    """The ARN the template passes (a test parametrizes it to name another secret)."""
    (name,) = secrets.names()
    return secrets.arn(name)


@pytest.fixture
def callback_env(secrets: SecretsManagerStandIn, secret_arn: str) -> dict[str, str]:
    """Configured as deployed: the ARN of the secret, no credentials in the environment."""
    return {"FEISHU_APP_ID": "", "FEISHU_SECRET_ARN": secret_arn, "AWS_ENDPOINT_URL_SECRETS_MANAGER": secrets.endpoint}


def test_the_credentials_are_read_while_the_container_starts(
    app: ModuleType, recorder: LambdaRecorder, sim: FeishuSimulator, secrets: SecretsManagerStandIn, harness: Harness
) -> None:
    # GIVEN the credentials only in Secrets Manager
    # WHEN Lambda initialises the container (the app fixture imports the handler module)
    # THEN the secret is read then, where Lambda gives the code its full CPU
    assert secrets.requests == 1
    # WHEN Feishu sends the url_verification challenge, then a calendar change
    challenge = {"challenge": "c-1", "token": sim.verification_token, "type": "url_verification"}
    answered = app.handler(signed_delivery(sim, challenge), FakeContext())
    open_id = harness.onboard("ou_secret_reader")
    changed = app.handler(signed_delivery(sim, sim.calendar_changed_payload([open_id])), FakeContext())
    # THEN both are answered with the secret's credentials, without reading it again
    assert (answered["statusCode"], reply_body(answered)) == (200, {"challenge": "c-1"})
    assert (changed["statusCode"], reply_body(changed)["started"]) == (200, 1)
    assert len(recorder.invocations) == 1
    assert secrets.requests == 1


@pytest.mark.parametrize("secret_arn", [SecretsManagerStandIn.arn("no-such-secret")])
def test_an_unreadable_secret_is_answered_with_503_and_does_not_fail_the_start(
    app: ModuleType, recorder: LambdaRecorder, sim: FeishuSimulator
) -> None:
    # GIVEN FEISHU_SECRET_ARN naming a secret that does not exist
    # WHEN the container starts (the app fixture's import does not raise) and a delivery comes
    reply = app.handler(signed_delivery(sim, sim.calendar_changed_payload(["ou_x"])), FakeContext())
    # THEN Feishu gets a 503 (it retries later), not a Lambda error, and nothing was started
    assert (reply["statusCode"], reply_body(reply)) == (503, {"msg": "not configured"})
    assert recorder.invocations == []
