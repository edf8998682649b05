"""Feishu callback cryptography, checked against Feishu's published test vector."""

from __future__ import annotations

import pytest

from feishu_mirror import crypto

OFFICIAL_KEY = "test key"
OFFICIAL_CIPHERTEXT = "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="


def test_official_vector_decrypts_to_hello_world() -> None:
    # GIVEN Feishu's documented key and ciphertext WHEN decrypted THEN the plaintext is "hello world"
    assert crypto.decrypt(crypto.derive_key(OFFICIAL_KEY), OFFICIAL_CIPHERTEXT) == b"hello world"


def test_encrypt_then_decrypt_round_trips_with_a_random_iv() -> None:
    key = crypto.derive_key("another key")
    first = crypto.encrypt(key, b'{"a": 1}')
    second = crypto.encrypt(key, b'{"a": 1}')
    assert first != second  # a fresh IV each time
    assert crypto.decrypt(key, first) == crypto.decrypt(key, second) == b'{"a": 1}'


@pytest.mark.parametrize(
    ("ciphertext", "reason"),
    [
        ("not base64!!", "base64"),
        ("AAAA", "length"),
        ("A" * 44 + "=", "base64"),
    ],
)
def test_malformed_ciphertexts_raise_a_decryption_error(ciphertext: str, reason: str) -> None:
    with pytest.raises(crypto.DecryptionError, match=reason):
        crypto.decrypt(crypto.derive_key(OFFICIAL_KEY), ciphertext)


def test_the_wrong_key_is_reported_as_invalid_padding() -> None:
    # GIVEN the official ciphertext WHEN decrypted with another key THEN the padding check fails
    with pytest.raises(crypto.DecryptionError, match="padding"):
        crypto.decrypt(crypto.derive_key("wrong key"), OFFICIAL_CIPHERTEXT)


def test_signature_matches_the_documented_formula() -> None:
    # GIVEN the worked example from the research note (sha256(timestamp+nonce+key || body))
    body = b'{"encrypt":"P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="}'
    expected = "87af8244f2f1e46efd59656bf7036173f8c4c5f4e485a18e0592b3093949d98e"
    # WHEN signed THEN the hex digest is the known one, and comparison ignores hex case
    assert crypto.signature("1700000000", "8f2c1d7a", OFFICIAL_KEY, body) == expected
    assert crypto.signature_matches(expected, expected.upper())
    assert not crypto.signature_matches(expected, expected[:-1] + "0")
    assert not crypto.signature_matches(expected, "é")
