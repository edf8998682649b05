"""OAuth onboarding against DynamoDB Local and the simulator's consent page and token endpoint."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from feishu_mirror.composition import FeishuApp
from feishu_mirror.config import FeishuCredentials
from feishu_mirror.errors import OnboardingError
from feishu_mirror.oauth_state import StateSigner
from feishu_mirror.onboarding import STATE_TTL_SECONDS, Onboarding
from local.feishu_sim import FeishuSimulator, http_error
from tests.integration.harness import Harness

pytestmark = pytest.mark.integration
CALLBACK = "http://127.0.0.1:3000/oauth/callback"


def onboarding(harness: Harness, *, clock_offset: float = 0) -> Onboarding:
    return harness.services_for(clock_offset=clock_offset).onboarding


def consent(authorize_url: str) -> dict[str, str]:
    """What the browser does: open the consent page and follow its redirect back to us."""
    reply = requests.get(authorize_url, allow_redirects=False, timeout=5)
    assert reply.status_code == 302, reply.text
    location = reply.headers["Location"]
    assert location.startswith(CALLBACK + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_consent_stores_tokens_subscribes_and_starts_the_first_sync(harness: Harness, sim: FeishuSimulator) -> None:
    # GIVEN a Feishu user who will click "Authorize"
    sim.add_user("ou_new", "Ada")
    sim.set_consent_user("ou_new")
    flow = onboarding(harness)
    # WHEN they go through /oauth/start and come back to /oauth/callback
    url = flow.start(CALLBACK)
    query = parse_qs(urlsplit(url).query)
    assert query["scope"] == ["calendar:calendar:readonly offline_access"]
    assert query["code_challenge_method"] == ["S256"]
    params = consent(url)
    identity = flow.complete(code=params["code"], state=params["state"], error=None, deadline=time.monotonic() + 30)
    # THEN the user is stored with both tokens, subscribed, and their first sync was started
    assert (identity.open_id, identity.name) == ("ou_new", "Ada")
    user = harness.user("ou_new")
    assert user["status"] == "active"
    assert user["access_token"]
    assert user["refresh_token"]
    assert user["subscribed_at"] > 0
    assert sim.is_subscribed("ou_new")
    assert harness.invoked == ["ou_new"]
    # AND the state cannot be used again
    with pytest.raises(OnboardingError) as again:
        flow.complete(code=params["code"], state=params["state"], error=None, deadline=time.monotonic() + 30)
    assert again.value.status == 400


def test_a_returning_user_keeps_their_sync_state_and_becomes_active(harness: Harness, sim: FeishuSimulator) -> None:
    open_id = harness.onboard("ou_back", extra_calendars=2)
    harness.sync(open_id)
    harness.set_user(open_id, status="reauth_required")
    sim.set_consent_user(open_id)
    flow = onboarding(harness)
    params = consent(flow.start(CALLBACK))
    flow.complete(code=params["code"], state=params["state"], error=None, deadline=time.monotonic() + 30)
    user = harness.user(open_id)
    assert user["status"] == "active"
    assert user["sync_token"]


def test_declined_consent_is_a_403_and_consumes_the_state(harness: Harness, sim: FeishuSimulator) -> None:
    sim.add_user("ou_no", "No")
    sim.set_consent_user("ou_no", deny=True)
    flow = onboarding(harness)
    params = consent(flow.start(CALLBACK))
    assert params["error"] == "access_denied"
    with pytest.raises(OnboardingError) as declined:
        flow.complete(code=None, state=params["state"], error=params["error"], deadline=time.monotonic() + 30)
    assert declined.value.status == 403
    assert harness.schedule.get("ou_no") is None
    nonce = StateSigner(sim.app_secret, STATE_TTL_SECONDS).verify(params["state"], time.time()).nonce
    assert not harness.tables.oauth_states.claim(nonce, 0)


@pytest.mark.parametrize("state", [None, "", "never-issued", "x" * 5000])
def test_missing_unknown_or_oversized_states_are_refused(harness: Harness, state: str | None) -> None:
    with pytest.raises(OnboardingError) as refused:
        onboarding(harness).complete(code="c", state=state, error=None, deadline=time.monotonic() + 30)
    assert refused.value.status == 400


def test_an_expired_state_is_refused(harness: Harness, sim: FeishuSimulator) -> None:
    sim.add_user("ou_late", "Late")
    sim.set_consent_user("ou_late")
    params = consent(onboarding(harness).start(CALLBACK))
    with pytest.raises(OnboardingError, match="expired") as late:
        onboarding(harness, clock_offset=601).complete(
            code=params["code"], state=params["state"], error=None, deadline=time.monotonic() + 30
        )
    assert late.value.status == 400


def test_a_code_with_another_consents_state_fails_pkce_and_is_a_400(harness: Harness, sim: FeishuSimulator) -> None:
    sim.add_user("ou_pkce", "P")
    sim.set_consent_user("ou_pkce")
    flow = onboarding(harness)
    # GIVEN two consents: the code of the first comes back with the state (so the verifier) of the second
    first, second = consent(flow.start(CALLBACK)), consent(flow.start(CALLBACK))
    with pytest.raises(OnboardingError, match="expired or was already used"):
        flow.complete(code=first["code"], state=second["state"], error=None, deadline=time.monotonic() + 30)
    assert harness.schedule.get("ou_pkce") is None


def test_starting_writes_nothing_and_forged_or_foreign_states_write_nothing_and_call_no_one(
    harness: Harness, sim: FeishuSimulator
) -> None:
    sim.add_user("ou_flood", "F")
    sim.set_consent_user("ou_flood")
    flow = onboarding(harness)
    table = harness.settings.oauth_state_table
    # WHEN /oauth/start is called a hundred times THEN the state table stays empty
    states = [parse_qs(urlsplit(flow.start(CALLBACK)).query)["state"][0] for _ in range(100)]
    assert len(set(states)) == 100
    assert harness.client.scan(TableName=table, Select="COUNT")["Count"] == 0
    # AND a state with a flipped byte, or one signed with another app's secret, is refused before any write
    # or Feishu call
    genuine = states[0]
    forged = genuine[:-2] + ("A" if genuine[-2] != "A" else "B") + genuine[-1]
    another_app = FeishuApp(FeishuCredentials(sim.app_id, "another app's secret"))
    foreign = harness.services_for(app=another_app).onboarding.start(CALLBACK)
    calls_before = len(sim.requests_log)
    for state in (forged, parse_qs(urlsplit(foreign).query)["state"][0]):
        with pytest.raises(OnboardingError, match="already used or is unknown"):
            flow.complete(code="c", state=state, error=None, deadline=time.monotonic() + 30)
    assert harness.client.scan(TableName=table, Select="COUNT")["Count"] == 0
    assert len(sim.requests_log) == calls_before
    # AND a genuine one is written once, when it comes back
    params = consent(flow.start(CALLBACK))
    flow.complete(code=params["code"], state=params["state"], error=None, deadline=time.monotonic() + 30)
    assert harness.client.scan(TableName=table, Select="COUNT")["Count"] == 1


def test_feishu_being_down_is_a_503_page_not_a_crash(harness: Harness, sim: FeishuSimulator) -> None:
    sim.add_user("ou_down", "D")
    sim.set_consent_user("ou_down")
    flow = onboarding(harness)
    params = consent(flow.start(CALLBACK))
    sim.inject("/open-apis/authen/v2/oauth/token", *[http_error(503)] * 10)
    with pytest.raises(OnboardingError) as down:
        flow.complete(code=params["code"], state=params["state"], error=None, deadline=time.monotonic() + 30)
    assert down.value.status == 503
