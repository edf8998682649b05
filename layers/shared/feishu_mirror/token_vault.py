"""Users' OAuth tokens, encrypted before they reach DynamoDB (envelope encryption with KMS).

Each write of a user's tokens asks KMS for a fresh 256-bit data key (``GenerateDataKey`` on the
customer-managed key ``TOKEN_KEY_ID``) and encrypts each token with AES-256-GCM under it. A sealed
token is self-contained::

    0x01 | len(wrapped key) (2 bytes, big-endian) | wrapped key | nonce (12 bytes) | ciphertext + tag

The KMS encryption context (``purpose``, ``open_id``) and the AES-GCM associated data (the format, the
attribute name and the ``open_id``) bind every ciphertext to its user and its attribute: a ciphertext
copied into another user's item, or from ``refresh_token`` into ``access_token``, fails to decrypt.

Reading a user's tokens costs one KMS ``Decrypt`` (both tokens of a write share their data key); a
table scan, a backup or an export holds only ciphertext that nobody without ``kms:Decrypt`` on the key
can open. A string in a token attribute is a plaintext token written before encryption: ``open``
accepts it and ``needs_sealing`` says so, and the sync seals it at once.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from feishu_mirror.errors import TokenVaultUnavailable
from feishu_mirror.models import SealedGrant, StoredToken, TokenGrant

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient

FORMAT = 1
NONCE_BYTES = 12
PURPOSE = "feishu-user-tokens"
ACCESS, REFRESH = "access_token", "refresh_token"


def encryption_context(open_id: str) -> dict[str, str]:
    """The KMS encryption context of a user's data keys (CloudTrail records it with every use)."""
    return {"purpose": PURPOSE, "open_id": open_id}


def _associated_data(open_id: str, attribute: str) -> bytes:
    return f"feishu-mirror/token/v{FORMAT}\x00{attribute}\x00{open_id}".encode()


class DataKeys(Protocol):
    """Where data keys come from and are unwrapped: KMS, with a user's encryption context."""

    def generate(self, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        """A new 256-bit data key: (plaintext, wrapped). Raises ``TokenVaultUnavailable``."""

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The plaintext of a wrapped data key. Raises ``TokenVaultUnavailable``."""


class KmsDataKeys:
    """``DataKeys`` from a KMS key (``AWS_ENDPOINT_URL_KMS`` points the client at a local stand-in)."""

    def __init__(self, client: KMSClient, key_id: str) -> None:
        self._client = client
        self.key_id = key_id

    def generate(self, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        """``GenerateDataKey`` (AES_256) under the key, bound to ``context``."""
        try:
            reply = self._client.generate_data_key(
                KeyId=self.key_id, KeySpec="AES_256", EncryptionContext=dict(context)
            )
        except (ClientError, BotoCoreError) as exc:
            raise TokenVaultUnavailable(f"KMS GenerateDataKey failed ({_error_code(exc)})") from exc
        return reply["Plaintext"], reply["CiphertextBlob"]

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """``Decrypt`` of a wrapped data key; only this key may have wrapped it, with this ``context``."""
        try:
            reply = self._client.decrypt(CiphertextBlob=wrapped, KeyId=self.key_id, EncryptionContext=dict(context))
        except (ClientError, BotoCoreError) as exc:
            raise TokenVaultUnavailable(f"KMS Decrypt failed ({_error_code(exc)})") from exc
        return reply["Plaintext"]


def _error_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


@dataclass(frozen=True, slots=True)
class OpenedTokens:
    """A user's tokens in plaintext, for the length of one sync."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)


class Sealer:
    """Seals one user's tokens under one data key (obtained before it is needed, see ``TokenVault.sealer``)."""

    def __init__(self, open_id: str, key: bytes, wrapped: bytes) -> None:
        self._open_id = open_id
        self._aead = AESGCM(key)
        self._header = bytes([FORMAT]) + struct.pack(">H", len(wrapped)) + wrapped

    def seal_token(self, attribute: str, token: str) -> bytes:
        """One token, sealed for ``attribute`` of this user's item."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, token.encode("utf-8"), _associated_data(self._open_id, attribute))
        return self._header + nonce + sealed

    def seal(self, grant: TokenGrant) -> SealedGrant:
        """The grant with both tokens sealed (a missing refresh token stays missing)."""
        return SealedGrant(
            access_token=self.seal_token(ACCESS, grant.access_token),
            access_expires_at=grant.access_expires_at,
            refresh_token=self.seal_token(REFRESH, grant.refresh_token) if grant.refresh_token else None,
            refresh_expires_at=grant.refresh_expires_at,
            scope=grant.scope,
        )


def _split(sealed: bytes) -> tuple[bytes, bytes, bytes]:
    """(wrapped key, nonce, ciphertext) of a sealed token; raises ``TokenVaultUnavailable`` if malformed."""
    if len(sealed) < 3 or sealed[0] != FORMAT:
        raise TokenVaultUnavailable("a stored token is not in a known sealed format")
    (length,) = struct.unpack(">H", sealed[1:3])
    wrapped, rest = sealed[3 : 3 + length], sealed[3 + length :]
    if len(wrapped) != length or len(rest) <= NONCE_BYTES:
        raise TokenVaultUnavailable("a stored token is truncated")
    return wrapped, rest[:NONCE_BYTES], rest[NONCE_BYTES:]


def needs_sealing(*stored: StoredToken | None) -> bool:
    """True when a token attribute still holds a plaintext token (written before encryption)."""
    return any(isinstance(value, str) and value for value in stored)


class TokenVault:
    """Seals tokens before they are stored and opens them when a sync needs them."""

    def __init__(self, keys: DataKeys) -> None:
        self._keys = keys

    def sealer(self, open_id: str) -> Sealer:
        """A sealer with a fresh data key for this user: one KMS call. Take it *before* asking Feishu for
        tokens that cannot be asked for twice (a refresh), so a KMS failure never strands them."""
        key, wrapped = self._keys.generate(encryption_context(open_id))
        return Sealer(open_id, key, wrapped)

    def seal(self, open_id: str, grant: TokenGrant) -> SealedGrant:
        """The grant sealed under a fresh data key."""
        return self.sealer(open_id).seal(grant)

    def open(self, open_id: str, access: StoredToken | None, refresh: StoredToken | None) -> OpenedTokens:
        """The user's tokens in plaintext: one KMS ``Decrypt`` per distinct data key (one, normally).

        Plaintext strings (from before encryption) pass through. Raises ``TokenVaultUnavailable`` when
        KMS fails or refuses, or a ciphertext does not belong to this user and attribute.
        """
        unwrapped: dict[bytes, AESGCM] = {}

        def open_one(attribute: str, stored: StoredToken | None) -> str | None:
            if not stored:
                return None
            if isinstance(stored, str):
                return stored
            wrapped, nonce, ciphertext = _split(stored)
            if wrapped not in unwrapped:
                unwrapped[wrapped] = AESGCM(self._keys.unwrap(wrapped, encryption_context(open_id)))
            try:
                return unwrapped[wrapped].decrypt(nonce, ciphertext, _associated_data(open_id, attribute)).decode()
            except (InvalidTag, UnicodeDecodeError) as exc:
                raise TokenVaultUnavailable(f"the stored {attribute} does not belong to this user") from exc

        return OpenedTokens(open_one(ACCESS, access) or "", open_one(REFRESH, refresh))
