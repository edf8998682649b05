"""No secret in logs, metrics or errors: the app secret, the encrypt key, the verification token and every
user access and refresh token stay out of everything the code prints and every exception it raises,
across onboarding, syncs (with a token refresh, a 429, failed refreshes) and callbacks good and bad.
"""

from __future__ import annotations

import base64
import logging
import sys
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from feishu_mirror.config import FeishuCredentials
from feishu_mirror.errors import MirrorError, OnboardingError
from feishu_mirror.observability import logger
from local.feishu_sim import CALENDARS_PATH, OAUTH_TOKEN_PATH, FeishuSimulator, http_error, rate_limited
from tests.integration.callback_handler import api_event, signed_delivery
from tests.integration.harness import Harness
from tests.lambda_handlers import FakeContext

pytestmark = pytest.mark.integration
REDIRECT = "http://127.0.0.1:3000/oauth/callback"


class Output:
    """Everything printed during the test: Powertools' JSON log lines, EMF metrics, stray prints."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._text: list[str] = []

    def text(self) -> str:
        captured = self._capsys.readouterr()
        self._text += [captured.out, captured.err]
        return "".join(self._text)


class CurrentStdout:
    """Writes to whatever ``sys.stdout`` is at the time: capsys swaps it between a test's phases."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@pytest.fixture
def output(capsys: pytest.CaptureFixture[str]) -> Iterator[Output]:
    """Route Powertools' log handler (bound to the stdout of import time) to the captured stdout, at DEBUG."""
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    previous_stream = handler.setStream(CurrentStdout())
    previous_level = logger.log_level
    logger.setLevel("DEBUG")
    try:
        yield Output(capsys)
    finally:
        handler.setStream(previous_stream)
        logger.setLevel(previous_level)


@pytest.fixture
def raised(monkeypatch: pytest.MonkeyPatch) -> list[MirrorError]:
    """Every exception of the package's hierarchy constructed during the test, caught or not."""
    instances: list[MirrorError] = []
    original = MirrorError.__init__

    def record(self: MirrorError, *args: Any) -> None:
        original(self, *args)
        instances.append(self)

    monkeypatch.setattr(MirrorError, "__init__", record)
    return instances


class Secrets:
    """The secrets of the run, gathered as they appear (tokens rotate)."""

    def __init__(self, sim: FeishuSimulator, harness: Harness) -> None:
        self._sim = sim
        self._harness = harness
        self.values: set[str] = {sim.app_secret, sim.encrypt_key or "", sim.verification_token}

    def note_users(self, *open_ids: str) -> None:
        for open_id in open_ids:
            self.values |= {token or "" for token in self._harness.tokens(open_id)}

    def all(self) -> set[str]:
        values = self.values | set(self._sim.issued_user_tokens())
        return {value for value in values if value}


def consent(authorize_url: str) -> dict[str, str]:
    """What the browser does: open the consent page and follow its redirect back to us."""
    reply = requests.get(authorize_url, allow_redirects=False, timeout=5)
    assert reply.status_code == 302, reply.text
    return {k: v[0] for k, v in parse_qs(urlsplit(reply.headers["Location"]).query).items()}


def test_no_secret_in_logs_metrics_or_errors(
    output: Output,
    raised: list[MirrorError],
    app: ModuleType,
    harness: Harness,
    sim: FeishuSimulator,
) -> None:
    secrets = Secrets(sim, harness)
    deadline = time.monotonic() + 60
    flow = harness.services.onboarding
    # GIVEN two users who went through the real OAuth flow (one code is then replayed, which is refused)
    for open_id in ("ou_secret_a", "ou_secret_b"):
        sim.add_user(open_id, f"User {open_id}")
        sim.create_calendar(open_id, summary="Team")
        sim.set_consent_user(open_id)
        params = consent(flow.start(REDIRECT))
        secrets.values.add(params["code"])
        flow.complete(code=params["code"], state=params["state"], error=None, deadline=deadline)
    with pytest.raises(OnboardingError):
        flow.complete(code=params["code"], state=params["state"], error=None, deadline=deadline)
    secrets.note_users("ou_secret_a", "ou_secret_b")
    # WHEN their calendars are synced: a full sync, a 429, an expired access token (the pair rotates),
    # a token endpoint that keeps failing, and a refresh token Feishu has revoked
    assert harness.sync("ou_secret_a").outcome == "synced"
    sim.inject(CALENDARS_PATH, rate_limited(1))
    sim.create_calendar("ou_secret_a", summary="After the 429")
    assert harness.sync("ou_secret_a").outcome == "synced"
    sim.expire_access_tokens("ou_secret_a")
    assert harness.sync("ou_secret_a").outcome == "synced"
    secrets.note_users("ou_secret_a")
    sim.expire_access_tokens("ou_secret_b")
    sim.inject(OAUTH_TOKEN_PATH, *[http_error(500)] * 8)
    assert harness.sync("ou_secret_b").outcome != "synced"
    sim.clear_faults()
    sim.revoke_refresh_tokens("ou_secret_b")
    assert harness.sync("ou_secret_b").outcome == "reauth_required"
    # AND the callback handles a genuine change, a challenge, and requests with a wrong token or signature
    replies = [
        app.handler(signed_delivery(sim, sim.calendar_changed_payload(["ou_secret_a"])), FakeContext()),
        app.handler(
            signed_delivery(sim, {"type": "url_verification", "challenge": "c", "token": sim.verification_token}),
            FakeContext(),
        ),
        app.handler(
            signed_delivery(sim, {**sim.calendar_changed_payload(["ou_secret_a"]), "header": {"token": "guess"}}),
            FakeContext(),
        ),
    ]
    forged = signed_delivery(sim, sim.calendar_changed_payload(["ou_secret_a"]))
    forged["headers"]["x-lark-signature"] = "0" * 64
    replies.append(app.handler(forged, FakeContext()))
    replies.append(app.handler(api_event({}, "not json"), FakeContext()))
    assert [r["statusCode"] for r in replies] == [200, 200, 401, 401, 400]
    # THEN the run did log, emit metrics and raise errors (so the search below searches something) ...
    text = output.text()
    for expected in (
        "access_token_rejected",
        "reauth_required",
        "event_dispatched",
        "pings_dispatched",
        "callback_rejected",
        "TokenRefreshes",
        "TokenRefreshFailures",
    ):
        assert expected in text, expected
    assert raised
    # ... and no secret appears in any of it, plain or base64-encoded
    errors = [f"{error!s} {error!r} {error.args!r} {vars(error)!r}" for error in raised]
    replies_text = repr(replies)
    assert len(secrets.all()) >= 8
    for secret in secrets.all():
        for form in (secret, base64.b64encode(secret.encode()).decode()):
            assert form not in text, "a secret reached the logs or metrics"
            assert all(form not in error for error in errors), "a secret reached an exception"
            assert form not in replies_text, "a secret reached a callback answer"


def test_credentials_repr_shows_only_the_app_id() -> None:
    # GIVEN the app's credentials WHEN they are printed (a log line, a traceback's locals) THEN only the id shows
    credentials = FeishuCredentials("cli_x", "app-secret-value", "encrypt-key-value", "verification-token-value")
    shown = f"{credentials!r} {credentials!s}"
    assert "cli_x" in shown
    for secret in ("app-secret-value", "encrypt-key-value", "verification-token-value"):
        assert secret not in shown
