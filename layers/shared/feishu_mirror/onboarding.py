"""OAuth onboarding: the consent redirect (PKCE S256, signed single-use expiring state) and its callback.

The start writes nothing: the state is signed (``feishu_mirror.oauth_state``). The callback verifies
the state and claims it once before anything else, trades the code for tokens, learns the
user's ``open_id``, stores the tokens, subscribes the user to calendar changes and starts the first
(full) sync. Each way it can fail maps to an ``OnboardingError`` with a status and a sentence for
the user; Feishu's own failures never surface as a 5xx from our code except when Feishu is down.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from feishu_mirror.errors import (
    AuthorizationCodeRejected,
    DeadlineExceeded,
    FeishuError,
    FeishuUnavailable,
    OnboardingError,
    TokenVaultUnavailable,
)
from feishu_mirror.feishu import DEFAULT_SCOPES
from feishu_mirror.models import SealedGrant, TokenGrant, UserIdentity
from feishu_mirror.oauth_state import StateRefused, StateSigner
from feishu_mirror.observability import count, logger
from feishu_mirror.pings import PingDispatcher
from feishu_mirror.token_vault import TokenVault

STATE_TTL_SECONDS = 600
MAX_PARAM_LENGTH = 2048
CALLBACK_PATH = "/oauth/callback"
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class OAuthApi(Protocol):
    """The Feishu calls of onboarding (``feishu.FeishuClient``)."""

    def authorize_url(self, *, redirect_uri: str, state: str, code_challenge: str, scopes: tuple[str, ...]) -> str:
        """The consent page's URL."""
        ...

    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str, deadline: float) -> TokenGrant:
        """The user's tokens for an authorization code."""
        ...

    def get_user_info(self, access_token: str, *, deadline: float) -> UserIdentity:
        """Who the token belongs to."""
        ...

    def subscribe_calendar_changes(self, access_token: str, *, deadline: float) -> None:
        """Subscribe the user to changes of their calendar list."""
        ...


class Authorizations(Protocol):
    """Where a user's authorisation is stored (``dynamodb.user_tokens.UserTokens``)."""

    def save_authorization(self, identity: UserIdentity, grant: SealedGrant, now: int) -> None:
        """Store the sealed tokens and make the user due now."""
        ...

    def mark_subscribed(self, open_id: str, now: int) -> None:
        """Record that the calendar-change subscription was made."""
        ...


class StateClaims(Protocol):
    """Single-use OAuth states (``dynamodb.oauth_states.OAuthStateStore``)."""

    def claim(self, nonce: str, expires_at: int) -> bool:
        """Mark a state used; False when it already was."""
        ...


def pkce_challenge(verifier: str) -> str:
    """S256 code challenge: base64url(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def redirect_uri(headers: Mapping[str, str], domain_name: str | None, public_base_url: str) -> str:
    """``<base>/oauth/callback``: ``PUBLIC_BASE_URL`` if set, else the origin the request came to.

    Behind API Gateway the origin is ``x-forwarded-proto`` + the ``host`` header (which is the
    custom domain when one is used), falling back to ``requestContext.domainName``.
    """
    if public_base_url:
        return public_base_url.rstrip("/") + CALLBACK_PATH
    proto = (headers.get("x-forwarded-proto") or "https").split(",")[0].strip().lower()
    host = (headers.get("host") or domain_name or "").strip()
    if proto not in ("http", "https") or not _HOST.fullmatch(host):
        raise OnboardingError(400, "cannot tell which address this request was sent to")
    return f"{proto}://{host}{CALLBACK_PATH}"


class Onboarding:
    """The two OAuth steps."""

    def __init__(
        self,
        *,
        feishu: OAuthApi,
        users: Authorizations,
        states: StateClaims,
        signer: StateSigner,
        pings: PingDispatcher,
        vault: TokenVault,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._feishu = feishu
        self._users = users
        self._states = states
        self._signer = signer
        self._pings = pings
        self._vault = vault
        self._scopes = scopes
        self._clock = clock

    def start(self, callback_uri: str) -> str:
        """Issue a signed state (no write) with a PKCE verifier; returns the Feishu consent URL."""
        state, verifier = self._signer.issue(callback_uri, int(self._clock()))
        count("OnboardingStarted")
        return self._feishu.authorize_url(
            redirect_uri=callback_uri, state=state, code_challenge=pkce_challenge(verifier), scopes=self._scopes
        )

    def complete(self, *, code: str | None, state: str | None, error: str | None, deadline: float) -> UserIdentity:
        """Finish the flow for the redirect Feishu sent back; raises ``OnboardingError``."""
        if not state or len(state) > MAX_PARAM_LENGTH:
            raise OnboardingError(400, "The sign-in response has no valid state. Please start again.")
        try:
            pending = self._signer.verify(state, self._clock())
        except StateRefused as exc:
            if exc.reason == "expired":
                raise OnboardingError(400, "This sign-in link expired. Please start again.") from exc
            raise OnboardingError(400, "This sign-in link was already used or is unknown. Please start again.") from exc
        if not self._states.claim(pending.nonce, pending.expires_at):
            raise OnboardingError(400, "This sign-in link was already used or is unknown. Please start again.")
        if error:
            count("OnboardingDeclined")
            raise OnboardingError(403, "Access was not granted, so your calendars will not be mirrored.")
        if not code or len(code) > MAX_PARAM_LENGTH:
            raise OnboardingError(400, "The sign-in response has no authorization code. Please start again.")
        try:
            grant = self._feishu.exchange_code(
                code=code, redirect_uri=pending.redirect_uri, code_verifier=pending.code_verifier, deadline=deadline
            )
            identity = self._feishu.get_user_info(grant.access_token, deadline=deadline)
        except AuthorizationCodeRejected as exc:
            logger.info("oauth_code_rejected", extra={"code": exc.code, "log_id": exc.log_id})
            raise OnboardingError(
                400, "The authorization code expired or was already used. Please start again."
            ) from exc
        except (FeishuUnavailable, DeadlineExceeded) as exc:
            logger.warning("oauth_feishu_unavailable")
            raise OnboardingError(503, "Feishu is not answering right now. Please try again in a minute.") from exc
        except FeishuError as exc:
            logger.warning("oauth_feishu_error", extra={"code": exc.code, "log_id": exc.log_id})
            raise OnboardingError(502, f"Feishu refused the sign-in (code {exc.code}).") from exc
        now = int(self._clock())
        if not grant.refresh_token:
            logger.warning("oauth_without_refresh_token")  # offline_access not granted: re-auth in ~2 h
        try:
            sealed = self._vault.seal(identity.open_id, grant)
        except TokenVaultUnavailable as exc:
            logger.error("token_vault_unavailable", extra={"error": exc.message})
            raise OnboardingError(
                503, "Your sign-in could not be saved right now. Please try again in a minute."
            ) from exc
        self._users.save_authorization(identity, sealed, now)
        logger.append_keys(open_id=identity.open_id)
        try:
            self._feishu.subscribe_calendar_changes(grant.access_token, deadline=deadline)
            self._users.mark_subscribed(identity.open_id, now)
        except (FeishuError, DeadlineExceeded) as exc:  # the sync re-asserts the subscription later
            logger.warning("subscription_failed", extra={"code": getattr(exc, "code", None)})
        self._pings.dispatch([identity.open_id], "onboarded")
        count("UsersOnboarded")
        return identity
