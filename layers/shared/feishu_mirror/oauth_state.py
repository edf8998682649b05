"""Signed OAuth state: ``/oauth/start`` writes nothing, so a flood of it costs no storage.

The state carries everything the callback needs, authenticated with an HMAC key derived from the
Feishu app secret::

    state    = base64url(nonce (16 bytes) | expires_at (8 bytes) | redirect_uri | tag (16 bytes))
    tag      = HMAC-SHA256(key, "state" | nonce | expires_at | redirect_uri)[:16]
    verifier = base64url(HMAC-SHA256(key, "pkce" | nonce))          (the PKCE code verifier)

The verifier is derived, never sent: only its S256 challenge leaves in the consent URL, so a state
someone copied is useless without our key. The callback checks the tag and the expiry (no I/O),
then claims the nonce once in the OAuth state table (``onboarding.StateClaims``) *before* any Feishu
call: a replayed or forged state never reaches Feishu, and only states this app issued, once each,
are ever written (each expiring with the table's TTL).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

KEY_LABEL = b"feishu-calendar-mirror/oauth-state/v1"
NONCE_BYTES = 16
TAG_BYTES = 16


class StateRefused(ValueError):
    """The state is not one this app issued (``reason`` = "unknown") or it has expired ("expired")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedState:
    """What a valid state stands for."""

    nonce: str  # hex; the key of its single-use claim
    redirect_uri: str
    expires_at: int
    code_verifier: str = field(repr=False)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class StateSigner:
    """Issues and verifies signed states with a key derived from ``secret`` (the Feishu app secret)."""

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._key = hmac.new(secret.encode("utf-8"), KEY_LABEL, hashlib.sha256).digest()
        self._ttl = ttl_seconds

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, b"state" + body, hashlib.sha256).digest()[:TAG_BYTES]

    def _verifier(self, nonce: bytes) -> str:
        return _b64(hmac.new(self._key, b"pkce" + nonce, hashlib.sha256).digest())

    def issue(self, redirect_uri: str, now: int) -> tuple[str, str]:
        """A new state for a consent that returns to ``redirect_uri``, and its PKCE code verifier."""
        nonce = os.urandom(NONCE_BYTES)
        body = nonce + struct.pack(">Q", now + self._ttl) + redirect_uri.encode("utf-8")
        return _b64(body + self._tag(body)), self._verifier(nonce)

    def verify(self, state: str, now: float) -> VerifiedState:
        """The state's content if this app issued it and it has not expired; raises ``StateRefused``."""
        try:
            raw = base64.urlsafe_b64decode(state + "=" * (-len(state) % 4))
        except (binascii.Error, ValueError) as exc:
            raise StateRefused("unknown") from exc
        body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        if len(body) < NONCE_BYTES + 8 or not hmac.compare_digest(tag, self._tag(body)):
            raise StateRefused("unknown")
        nonce, (expires_at,) = body[:NONCE_BYTES], struct.unpack(">Q", body[NONCE_BYTES : NONCE_BYTES + 8])
        if expires_at < now:
            raise StateRefused("expired")
        return VerifiedState(
            nonce=nonce.hex(),
            redirect_uri=body[NONCE_BYTES + 8 :].decode("utf-8"),
            expires_at=int(expires_at),
            code_verifier=self._verifier(nonce),
        )
