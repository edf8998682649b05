"""A user's tokens during one sync: opened on first use, refreshed under the lease, stored at once.

Refresh tokens are single-use, so a refresh is marked on the user before it is sent and its pair stored
at once, both conditional on the ``token_version`` the sync holds: a refresh whose answer never arrives
is never sent again (the next attempt asks the user to authorise again unless a newer pair appeared),
and a user who consents again while a sync runs keeps the new consent (``TokensSuperseded``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from feishu_mirror.errors import (
    AccessTokenRejected,
    DeadlineExceeded,
    FeishuError,
    MirrorError,
    ReauthorizationRequired,
    RefreshOutcomeUnknown,
    TokensSuperseded,
)
from feishu_mirror.models import Fence, SealedGrant, TokenGrant, UserRecord
from feishu_mirror.observability import count, logger
from feishu_mirror.token_vault import TokenVault, needs_sealing

REFRESH_MARGIN_SECONDS = 300
# A refresh is started only with this much of the invocation left: the call's connect and read timeouts
# and the retried write of the new pair, so that the answer is stored before the invocation can end.
REFRESH_TIME_NEEDED_SECONDS = 25
R = TypeVar("R")


class TokenRecords(Protocol):
    """The writes of a user's token pair a sync makes (``dynamodb.user_tokens.UserTokens``)."""

    def get(self, open_id: str) -> UserRecord | None:
        """The user's record (strongly consistent), or None."""
        ...

    def begin_refresh(self, fence: Fence, now: int, token_version: int) -> None:
        """Mark the stored refresh token as being spent; raises ``TokensSuperseded`` or ``LeaseLost``."""
        ...

    def end_refresh(self, open_id: str, token_version: int) -> None:
        """Clear the mark after a refresh Feishu certainly did not process."""
        ...

    def save_tokens(self, open_id: str, now: int, grant: SealedGrant, *, token_version: int) -> int:
        """Store the rotated pair in place of ``token_version``'s; the new version. Raises ``TokensSuperseded``."""
        ...

    def seal_stored_tokens(self, fence: Fence, now: int, sealed: SealedGrant, *, token_version: int) -> bool:
        """Replace plaintext tokens with the same tokens sealed; False when a new authorisation replaced them."""
        ...


class TokenRefresher(Protocol):
    """Feishu's refresh of a user access token (``feishu.FeishuClient``)."""

    def refresh_access_token(self, refresh_token: str, *, deadline: float) -> TokenGrant:
        """A new pair for the refresh token; raises ``RefreshOutcomeUnknown``, ``ReauthorizationRequired``, …"""
        ...


@dataclass(slots=True)
class _Opened:
    """The token pair a sync works with (opened), and the ``token_version`` it was stored under."""

    access_token: str = field(repr=False)
    access_expires_at: int
    refresh_token: str | None = field(repr=False)
    refresh_expires_at: int | None
    version: int
    refresh_in_doubt: bool = False  # a refresh of this pair went out and its answer was never stored


class TokenSession:
    """The tokens of one user for one sync invocation (see the module docstring)."""

    def __init__(
        self,
        stored: UserRecord,
        fence: Fence,
        deadline: float,
        *,
        records: TokenRecords,
        vault: TokenVault,
        refresher: TokenRefresher,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stored = stored  # the user as last adopted: its tokens are opened on first use
        self._opened: _Opened | None = None
        self._fence = fence
        self._deadline = deadline
        self._records = records
        self._vault = vault
        self._refresher = refresher
        self._clock = clock
        self._monotonic = monotonic

    def _now(self) -> int:
        return int(self._clock())

    @property
    def version(self) -> int:
        """The ``token_version`` of the pair this sync works with (every token write is conditional on it)."""
        return self._opened.version if self._opened else self._stored.token_version

    def adopt(self, user: UserRecord) -> None:
        """Work with ``user``'s stored tokens from now on (opened again on first use)."""
        self._stored, self._opened = user, None

    def adopt_if_newer(self, fresh: UserRecord) -> None:
        """Work on with the stored pair when it is newer than ours (the user consented again meanwhile)."""
        if fresh.token_version != self.version:
            logger.info("newer_tokens_adopted")
            self.adopt(fresh)

    def call[T](self, call: Callable[[str], T]) -> T:
        """One Feishu call with the user's access token, refreshing it once if Feishu says it expired."""
        try:
            return call(self.access_token())
        except AccessTokenRejected:
            logger.info("access_token_rejected")
            return call(self.refresh())

    def _open(self) -> _Opened:
        """The user's tokens in plaintext, opened on first use (one KMS call per sync). Plaintext tokens
        from before encryption are sealed in place now. Raises ``TokenVaultUnavailable``."""
        if self._opened is None:
            user = self._stored
            opened = self._vault.open(user.open_id, user.access_token, user.refresh_token)
            tokens = _Opened(
                opened.access_token,
                user.access_expires_at,
                opened.refresh_token,
                user.refresh_expires_at,
                user.token_version,
                refresh_in_doubt=user.refresh_started_version == user.token_version,
            )
            if needs_sealing(user.access_token, user.refresh_token):
                grant = TokenGrant(tokens.access_token, tokens.access_expires_at, tokens.refresh_token, None)
                sealed = self._vault.seal(user.open_id, grant)
                if self._records.seal_stored_tokens(self._fence, self._now(), sealed, token_version=user.token_version):
                    count("TokensSealed")
            self._opened = tokens
        return self._opened

    def access_token(self) -> str:
        """A valid access token, refreshed first when it expires within ``REFRESH_MARGIN_SECONDS``."""
        tokens = self._open()
        if tokens.access_token and tokens.access_expires_at - self._now() > REFRESH_MARGIN_SECONDS:
            return tokens.access_token
        return self.refresh()

    def refresh(self) -> str:
        """Rotate the token pair (we hold the lease, so no other sync can) and persist it at once.

        The refresh token is sent at most once: the user is marked before the request goes out and the
        new pair (or, for a refresh Feishu certainly did not process, the removal of the mark) is stored
        after it, both only while the stored tokens are still ours (``TokensSuperseded`` otherwise). A
        refresh whose outcome is unknown fails this attempt; the next one finds the mark and asks the
        user to authorise again, unless a newer pair was stored meanwhile.
        """
        tokens = self._open()
        if tokens.refresh_in_doubt:
            raise ReauthorizationRequired(
                -1,
                "an earlier token refresh got no answer, so its refresh token may be spent; it is not sent again",
                cause="refresh_outcome_unknown",
            )
        if not tokens.refresh_token or (tokens.refresh_expires_at and tokens.refresh_expires_at <= self._now()):
            raise ReauthorizationRequired(20037, "refresh token missing or expired", cause="refresh_token_expired")
        if self._deadline - self._monotonic() < REFRESH_TIME_NEEDED_SECONDS:
            raise DeadlineExceeded("not enough time left to refresh the token pair and store it")
        # The data key first: Feishu's refresh consumes the old refresh token, so nothing may fail between
        # its answer and the write of the new pair that a retry could not redo.
        open_id = self._fence.open_id
        sealer = self._vault.sealer(open_id)
        self._records.begin_refresh(self._fence, self._now(), tokens.version)
        try:
            grant = self._refresher.refresh_access_token(tokens.refresh_token, deadline=self._deadline)
        except RefreshOutcomeUnknown as exc:
            count("TokenRefreshFailures")
            count("TokenRefreshesUnanswered")
            tokens.refresh_in_doubt = True
            raise self._unanswered(exc) from exc
        except ReauthorizationRequired:
            count("TokenRefreshFailures")
            raise
        except (FeishuError, DeadlineExceeded):
            count("TokenRefreshFailures")  # Feishu certainly did not process it: the token may be sent again
            self._records.end_refresh(open_id, tokens.version)
            raise
        count("TokenRefreshes")
        version = self._records.save_tokens(open_id, self._now(), sealer.seal(grant), token_version=tokens.version)
        kept = grant.refresh_token is None  # Feishu did not rotate it: the stored one stays valid
        self._opened = _Opened(
            grant.access_token,
            grant.access_expires_at,
            tokens.refresh_token if kept else grant.refresh_token,
            tokens.refresh_expires_at if kept or not grant.refresh_expires_at else grant.refresh_expires_at,
            version,
        )
        return grant.access_token

    def _unanswered(self, exc: RefreshOutcomeUnknown) -> MirrorError:
        """After a refresh whose outcome is unknown: ``TokensSuperseded`` when a newer pair is stored
        meanwhile, else the error that fails this attempt (the mark stays for the next one)."""
        fresh = self._records.get(self._fence.open_id)
        if fresh is not None and fresh.token_version != self.version:
            return TokensSuperseded(f"tokens of {self._fence.open_id} replaced")
        logger.warning("token_refresh_unanswered", extra={"error": exc.message, "log_id": exc.log_id})
        return RefreshOutcomeUnknown(
            exc.code,
            f"a token refresh got no answer ({exc.message}); its refresh token is not sent again",
            http_status=exc.http_status,
            log_id=exc.log_id,
        )
