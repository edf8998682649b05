"""Sealing users' tokens: each ciphertext opens only for its user and its attribute, with one data-key
unwrap per read; plaintext from before encryption passes through and is flagged for sealing."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from feishu_mirror.errors import TokenVaultUnavailable
from feishu_mirror.models import TokenGrant
from feishu_mirror.token_vault import PURPOSE, TokenVault, needs_sealing


class FakeKms:
    """Wraps data keys under one master key with the encryption context as associated data, as KMS does."""

    def __init__(self) -> None:
        self._master = AESGCM(AESGCM.generate_key(256))
        self.generated = 0
        self.unwrapped = 0

    @staticmethod
    def _context(context: Mapping[str, str]) -> bytes:
        return json.dumps(dict(context), sort_keys=True).encode()

    def generate(self, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        self.generated += 1
        key, nonce = os.urandom(32), os.urandom(12)
        return key, nonce + self._master.encrypt(nonce, key, self._context(context))

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        self.unwrapped += 1
        try:
            return self._master.decrypt(wrapped[:12], wrapped[12:], self._context(context))
        except InvalidTag as exc:
            raise TokenVaultUnavailable("KMS Decrypt failed (InvalidCiphertextException)") from exc


GRANT = TokenGrant("u-access-secret", 7200, "ur-refresh-secret", 86400, "scope")


def test_sealed_tokens_open_for_their_user_with_one_unwrap_and_hold_no_plaintext() -> None:
    kms = FakeKms()
    vault = TokenVault(kms)
    sealed = vault.seal("ou_ada", GRANT)
    assert kms.generated == 1
    assert b"u-access-secret" not in sealed.access_token
    assert sealed.refresh_token is not None
    assert b"ur-refresh-secret" not in sealed.refresh_token
    assert "secret" not in repr(sealed)
    opened = vault.open("ou_ada", sealed.access_token, sealed.refresh_token)
    assert (opened.access_token, opened.refresh_token) == ("u-access-secret", "ur-refresh-secret")
    assert kms.unwrapped == 1  # both tokens of a write share their data key
    assert "secret" not in repr(opened)


def test_a_ciphertext_copied_to_another_user_or_attribute_does_not_open() -> None:
    vault = TokenVault(FakeKms())
    ada = vault.seal("ou_ada", GRANT)
    with pytest.raises(TokenVaultUnavailable):
        vault.open("ou_eve", ada.access_token, None)  # the data key is bound to ou_ada
    with pytest.raises(TokenVaultUnavailable, match="does not belong"):
        vault.open("ou_ada", ada.refresh_token, None)  # a refresh token is not an access token


def test_each_write_gets_a_fresh_data_key_and_nonce() -> None:
    kms = FakeKms()
    vault = TokenVault(kms)
    first, second = vault.seal("ou_ada", GRANT), vault.seal("ou_ada", GRANT)
    assert first.access_token != second.access_token
    assert first.access_token[:40] != second.access_token[:40]  # another wrapped key
    opened = vault.open("ou_ada", first.access_token, second.refresh_token)
    assert (opened.access_token, opened.refresh_token) == ("u-access-secret", "ur-refresh-secret")
    assert kms.unwrapped == 2


def test_plaintext_from_before_encryption_passes_through_and_is_flagged() -> None:
    kms = FakeKms()
    vault = TokenVault(kms)
    opened = vault.open("ou_old", "u-plain-access", "ur-plain-refresh")
    assert (opened.access_token, opened.refresh_token) == ("u-plain-access", "ur-plain-refresh")
    assert kms.unwrapped == 0
    assert needs_sealing("u-plain-access", None)
    sealed = vault.seal("ou_old", GRANT)
    assert not needs_sealing(sealed.access_token, sealed.refresh_token)
    assert not needs_sealing(b"", None)


@pytest.mark.parametrize("stored", [b"", b"\x02abc", b"\x01\x00\xff" + b"x" * 10, b"\x01\x00\x02ab" + b"n" * 12])
def test_malformed_ciphertexts_are_refused_not_crashed_on(stored: bytes) -> None:
    vault = TokenVault(FakeKms())
    if not stored:
        assert vault.open("ou_ada", stored, None).access_token == ""
        return
    with pytest.raises(TokenVaultUnavailable):
        vault.open("ou_ada", stored, None)


def test_the_encryption_context_names_the_purpose_and_the_user() -> None:
    seen: list[dict[str, str]] = []

    class Recording(FakeKms):
        def generate(self, context: Mapping[str, str]) -> tuple[bytes, bytes]:
            seen.append(dict(context))
            return super().generate(context)

    TokenVault(Recording()).seal("ou_ada", GRANT)
    assert seen == [{"purpose": PURPOSE, "open_id": "ou_ada"}]
