"""Exception hierarchy of the mirror. Messages never carry tokens or secrets."""

from __future__ import annotations


class MirrorError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(MirrorError):
    """A required setting is missing or malformed; raised at start-up."""


class CredentialsUnavailable(ConfigError):
    """The Feishu secret could not be read (Secrets Manager unreachable, the secret missing, unreadable
    or not JSON): like a missing setting, nothing can be verified or called until it can."""


class CallbackRejected(MirrorError):
    """A Feishu callback request that must be refused with ``status`` and a short ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class FeishuError(MirrorError):
    """Feishu answered with a non-zero ``code`` (or not at all) and retrying will not help."""

    def __init__(self, code: int, message: str, *, http_status: int | None = None, log_id: str = "") -> None:
        super().__init__(f"Feishu error {code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status
        self.log_id = log_id


class FeishuUnavailable(FeishuError):
    """Retries for a transient failure (429, 5xx, transport error) ran out of attempts or time."""


class SyncTokenExpired(FeishuError):
    """190008: the page_token or sync_token expired; a new full listing is needed."""


class AccessTokenRejected(FeishuError):
    """The user access token was refused (expired or invalid); refresh it and retry once."""


class ReauthorizationRequired(FeishuError):
    """The user must authorise again: refresh token rejected, user left the tenant, and the like."""


class AuthorizationCodeRejected(FeishuError):
    """The OAuth authorization code was expired, reused, or failed PKCE verification."""


class DeadlineExceeded(MirrorError):
    """Not enough of the invocation's time is left to do the next step safely."""


class LeaseLost(MirrorError):
    """The user's sync lease is no longer ours, so nothing more may be written for that user."""


class OnboardingError(MirrorError):
    """An OAuth onboarding step failed in a way the user should be told about (``status``, ``reason``)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
