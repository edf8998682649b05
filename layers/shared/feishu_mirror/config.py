"""Settings from environment variables, parsed once, and the Feishu app credentials.

Every table name and function name reaches the code through an environment variable set in
``template.yaml``. The Feishu credentials come from ``FEISHU_APP_ID`` / ``FEISHU_APP_SECRET`` /
``FEISHU_ENCRYPT_KEY`` / ``FEISHU_VERIFICATION_TOKEN`` when those are set (local runs and tests), and
otherwise from the Secrets Manager secret named by ``FEISHU_SECRET_ARN``, cached per container.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from feishu_mirror.errors import ConfigError, CredentialsUnavailable

CREDENTIAL_NAMES = ("FEISHU_APP_ID", "FEISHU_APP_SECRET", "FEISHU_ENCRYPT_KEY", "FEISHU_VERIFICATION_TOKEN")
SECRET_CACHE_SECONDS = 300


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _origin(env: Mapping[str, str], name: str, default: str) -> str:
    value = (env.get(name) or default).strip().rstrip("/")
    if not value.startswith(("https://", "http://")):
        raise ConfigError(f"{name} must be an http(s) origin, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, read from the environment once per container."""

    feishu_base_url: str = "https://open.feishu.cn"
    feishu_accounts_url: str = "https://accounts.feishu.cn"
    secret_arn: str = ""
    users_table: str = ""
    calendars_table: str = ""
    events_table: str = ""
    event_listings_table: str = ""
    oauth_state_table: str = ""
    idempotency_table: str = ""
    rate_limit_table: str = ""
    sync_function_name: str = ""
    token_key_id: str = ""  # the KMS key that seals users' tokens (its ARN in the template)
    public_base_url: str = ""
    page_size: int = 1000
    feishu_requests_per_minute: int = 950
    stale_after_seconds: int = 6 * 3600
    subscription_refresh_seconds: int = 24 * 3600
    callback_max_skew_seconds: int = 8 * 3600  # accepted age of a signed timestamp (Feishu retries for ~7.1 h)
    callback_max_ahead_seconds: int = 300  # how far a signed timestamp may be ahead of our clock
    dedup_ttl_seconds: int = 24 * 3600  # longer than the window above, so a replay inside it is a duplicate
    tombstone_ttl_seconds: int = 30 * 24 * 3600
    mass_delete_confirm_seconds: int = 3600
    resync_max_users_per_run: int = 200  # about a minute of the event-listing budget (see resync)

    @classmethod
    def from_env(cls, *required: str, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings; each name in ``required`` (an environment variable) must be set."""
        env = os.environ if env is None else env
        missing = [name for name in required if not env.get(name, "").strip()]
        if missing:
            raise ConfigError(f"missing required environment variable(s): {', '.join(missing)}")
        page_size = _int(env, "FEISHU_PAGE_SIZE", 1000)
        if not 50 <= page_size <= 1000:
            raise ConfigError(f"FEISHU_PAGE_SIZE must be between 50 and 1000, got {page_size}")
        max_age = _int(env, "CALLBACK_MAX_SKEW_SECONDS", 8 * 3600)
        max_ahead = _int(env, "CALLBACK_MAX_AHEAD_SECONDS", 300)
        dedup_ttl = _int(env, "DEDUP_TTL_SECONDS", 24 * 3600)
        if dedup_ttl <= max_age + max_ahead:
            # A delivery replayed inside the timestamp window must still find its idempotency record.
            raise ConfigError(
                f"DEDUP_TTL_SECONDS ({dedup_ttl}) must exceed CALLBACK_MAX_SKEW_SECONDS + CALLBACK_MAX_AHEAD_SECONDS"
                f" ({max_age + max_ahead})"
            )
        return cls(
            feishu_base_url=_origin(env, "FEISHU_BASE_URL", "https://open.feishu.cn"),
            feishu_accounts_url=_origin(env, "FEISHU_ACCOUNTS_URL", "https://accounts.feishu.cn"),
            secret_arn=env.get("FEISHU_SECRET_ARN", "").strip(),
            users_table=env.get("USERS_TABLE", ""),
            calendars_table=env.get("CALENDARS_TABLE", ""),
            events_table=env.get("EVENTS_TABLE", ""),
            event_listings_table=env.get("EVENT_LISTINGS_TABLE", ""),
            oauth_state_table=env.get("OAUTH_STATE_TABLE", ""),
            idempotency_table=env.get("IDEMPOTENCY_TABLE", ""),
            rate_limit_table=env.get("RATE_LIMIT_TABLE", ""),
            sync_function_name=env.get("SYNC_FUNCTION_NAME", ""),
            token_key_id=env.get("TOKEN_KEY_ID", "").strip(),
            public_base_url=env.get("PUBLIC_BASE_URL", "").strip().rstrip("/"),
            page_size=page_size,
            feishu_requests_per_minute=_int(env, "FEISHU_REQUESTS_PER_MINUTE", 950),
            stale_after_seconds=_int(env, "RESYNC_STALE_AFTER_SECONDS", 6 * 3600),
            subscription_refresh_seconds=_int(env, "SUBSCRIPTION_REFRESH_SECONDS", 24 * 3600),
            callback_max_skew_seconds=max_age,
            callback_max_ahead_seconds=max_ahead,
            dedup_ttl_seconds=dedup_ttl,
            tombstone_ttl_seconds=_int(env, "TOMBSTONE_TTL_SECONDS", 30 * 24 * 3600),
            mass_delete_confirm_seconds=_int(env, "MASS_DELETE_CONFIRM_SECONDS", 3600),
            resync_max_users_per_run=_int(env, "RESYNC_MAX_USERS_PER_RUN", 200),
        )


@dataclass(frozen=True, slots=True)
class FeishuCredentials:
    """The Feishu app's credentials. ``repr`` shows only the app id."""

    app_id: str
    app_secret: str = field(repr=False)
    encrypt_key: str = field(default="", repr=False)
    verification_token: str = field(default="", repr=False)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str) -> FeishuCredentials:
        """Build from a mapping keyed by ``CREDENTIAL_NAMES``; app id and secret are required."""
        for name in ("FEISHU_APP_ID", "FEISHU_APP_SECRET"):
            if not isinstance(values.get(name), str) or not values[name]:
                raise ConfigError(f"{name} is missing from {source}")
        return cls(
            app_id=values["FEISHU_APP_ID"],
            app_secret=values["FEISHU_APP_SECRET"],
            encrypt_key=str(values.get("FEISHU_ENCRYPT_KEY") or ""),
            verification_token=str(values.get("FEISHU_VERIFICATION_TOKEN") or ""),
        )


def load_credentials(settings: Settings, env: Mapping[str, str] | None = None) -> FeishuCredentials:
    """Credentials from the environment when ``FEISHU_APP_ID`` is set, else from Secrets Manager.

    Secrets Manager values are cached by Powertools for ``SECRET_CACHE_SECONDS``, so a rotated
    secret is picked up without a redeploy. Raises ``ConfigError`` when neither source is configured,
    ``CredentialsUnavailable`` (a ``ConfigError``) when the secret cannot be read.
    """
    env = os.environ if env is None else env
    if env.get("FEISHU_APP_ID"):
        return FeishuCredentials.from_mapping(env, "the environment")
    if not settings.secret_arn:
        raise ConfigError("set FEISHU_SECRET_ARN (or FEISHU_APP_ID and FEISHU_APP_SECRET for local runs)")
    from aws_lambda_powertools.utilities import parameters  # noqa: PLC0415 - only the cloud path needs it
    from aws_lambda_powertools.utilities.parameters.exceptions import (  # noqa: PLC0415
        GetParameterError,
        TransformParameterError,
    )

    try:
        secret = parameters.get_secret(settings.secret_arn, transform="json", max_age=SECRET_CACHE_SECONDS)
    except (GetParameterError, TransformParameterError) as exc:
        raise CredentialsUnavailable(f"the Feishu secret could not be read ({type(exc).__name__})") from exc
    if not isinstance(secret, Mapping):
        raise ConfigError("the Feishu secret must be a JSON object")
    return FeishuCredentials.from_mapping(secret, "the Feishu secret")
