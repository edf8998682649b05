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
    """The user must authorise again: refresh token rejected, user left the tenant, and the like.

    ``cause`` is a short keyword for operators (``REAUTH_CAUSES``), kept in the user's health.
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        cause: str = "refresh_token_refused",
        http_status: int | None = None,
        log_id: str = "",
    ) -> None:
        super().__init__(code, message, http_status=http_status, log_id=log_id)
        self.cause = cause


# Why a user must authorise again, as kept in ``reauth_cause`` on the user's item.
REAUTH_CAUSES = (
    "refresh_token_refused",  # the token endpoint refused the refresh token (any code but 20050 and 5xx)
    "refresh_token_expired",  # no refresh token stored, or past its expiry (the 365-day cap)
    "refresh_outcome_unknown",  # a refresh may have been spent without its answer arriving
    "scope_missing",  # Feishu refused a call for a scope the user (or the app) has not been granted
    "user_left_tenant",  # 195100: the user is no longer in the tenant
)


class ScopeMissing(ReauthorizationRequired):
    """99991672/99991676/99991679 and kin: the token lacks a scope; ``scopes`` are Feishu's candidates."""

    def __init__(
        self, code: int, message: str, *, scopes: tuple[str, ...], http_status: int | None = None, log_id: str = ""
    ) -> None:
        super().__init__(code, message, cause="scope_missing", http_status=http_status, log_id=log_id)
        self.scopes = scopes

    @property
    def missing_scope(self) -> str:
        """The scope to name in the user's health: Feishu's candidates (any one will do), else the code."""
        return " or ".join(self.scopes) if self.scopes else f"not named by Feishu (code {self.code})"


class RefreshOutcomeUnknown(FeishuUnavailable):
    """A refresh request may have reached Feishu but no usable answer came back (read timeout, connection
    closed after sending, a gateway's 5xx, an unreadable 200): the refresh token may be spent, so it must
    never be sent again."""


class TokensSuperseded(MirrorError):
    """The user's tokens changed under a running sync (the user consented again, or another sync stored a
    newer pair): this sync must neither store tokens nor mark the user, only stop and leave them due."""


class AuthorizationCodeRejected(FeishuError):
    """The OAuth authorization code was expired, reused, or failed PKCE verification."""


class DeadlineExceeded(MirrorError):
    """Not enough of the invocation's time is left to do the next step safely."""


class UnknownUser(LookupError):
    """No such user in the users table (never onboarded)."""


class LeaseLost(MirrorError):
    """The user's sync lease is no longer ours, so nothing more may be written for that user."""


class OnboardingError(MirrorError):
    """An OAuth onboarding step failed in a way the user should be told about (``status``, ``reason``)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class TokenVaultUnavailable(MirrorError):
    """A user's tokens could not be sealed or opened: KMS failed or refused, or a stored ciphertext does
    not belong to that user. Nothing is dropped: the sync records it and is retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
