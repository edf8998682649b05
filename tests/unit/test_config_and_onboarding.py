"""Settings parsing, credential handling and the pure parts of OAuth onboarding."""

from __future__ import annotations

import pytest

from feishu_mirror.config import FeishuCredentials, Settings, load_credentials
from feishu_mirror.errors import ConfigError, OnboardingError
from feishu_mirror.onboarding import pkce_challenge, redirect_uri


def test_missing_required_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="USERS_TABLE, SYNC_FUNCTION_NAME"):
        Settings.from_env("USERS_TABLE", "SYNC_FUNCTION_NAME", env={"USERS_TABLE": " "})


def test_settings_defaults_and_overrides() -> None:
    settings = Settings.from_env(env={"FEISHU_BASE_URL": "http://127.0.0.1:8089/", "FEISHU_PAGE_SIZE": "50"})
    assert settings.feishu_base_url == "http://127.0.0.1:8089"
    assert settings.feishu_accounts_url == "https://accounts.feishu.cn"
    assert settings.page_size == 50
    # the callback's timestamp window covers Feishu's ~7.1 h of retries, the dedup TTL outlives it
    assert (settings.callback_max_skew_seconds, settings.callback_max_ahead_seconds) == (8 * 3600, 300)
    assert settings.dedup_ttl_seconds > settings.callback_max_skew_seconds + settings.callback_max_ahead_seconds


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEISHU_PAGE_SIZE": "10"}, "between 50 and 1000"),
        ({"FEISHU_PAGE_SIZE": "many"}, "integer"),
        ({"FEISHU_BASE_URL": "open.feishu.cn"}, "http"),
        # the idempotency record must outlive the timestamp window, or a replay inside it is a new event
        ({"DEDUP_TTL_SECONDS": "28800"}, "DEDUP_TTL_SECONDS"),
        ({"CALLBACK_MAX_SKEW_SECONDS": "86400"}, "CALLBACK_MAX_SKEW_SECONDS"),
    ],
)
def test_malformed_settings_fail_with_the_variable_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env=env)


def test_credentials_come_from_the_environment_and_hide_secrets_in_repr() -> None:
    env = {"FEISHU_APP_ID": "cli_x", "FEISHU_APP_SECRET": "s3cret", "FEISHU_ENCRYPT_KEY": "k3y"}
    credentials = load_credentials(Settings(), env)
    assert credentials == FeishuCredentials("cli_x", "s3cret", "k3y", "")
    assert "s3cret" not in repr(credentials)
    assert "k3y" not in repr(credentials)


def test_without_credentials_or_a_secret_arn_start_up_fails_clearly() -> None:
    with pytest.raises(ConfigError, match="FEISHU_SECRET_ARN"):
        load_credentials(Settings(), {})
    with pytest.raises(ConfigError, match="FEISHU_APP_SECRET"):
        load_credentials(Settings(), {"FEISHU_APP_ID": "cli_x"})


def test_pkce_challenge_matches_rfc_7636() -> None:
    assert (
        pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


def test_redirect_uri_prefers_the_configured_public_base_url() -> None:
    assert redirect_uri({"host": "x"}, None, "https://cal.example.com/") == "https://cal.example.com/oauth/callback"


def test_redirect_uri_follows_the_request_behind_api_gateway_and_locally() -> None:
    api_gw = {"host": "abc.execute-api.eu-west-1.amazonaws.com", "x-forwarded-proto": "https"}
    assert redirect_uri(api_gw, None, "") == "https://abc.execute-api.eu-west-1.amazonaws.com/oauth/callback"
    local = {"host": "127.0.0.1:3000", "x-forwarded-proto": "http"}
    assert redirect_uri(local, None, "") == "http://127.0.0.1:3000/oauth/callback"
    assert redirect_uri({}, "d.example.com", "") == "https://d.example.com/oauth/callback"


@pytest.mark.parametrize("headers", [{}, {"host": "x", "x-forwarded-proto": "ftp"}, {"host": "bad host/"}])
def test_redirect_uri_refuses_requests_it_cannot_place(headers: dict[str, str]) -> None:
    with pytest.raises(OnboardingError):
        redirect_uri(headers, None, "")
