"""Feishu's callback cryptography: AES-256-CBC bodies and SHA-256 request signatures.

key = SHA-256(encrypt_key); ciphertext = base64(iv || AES-256-CBC(pkcs7(plaintext))).
signature = hex(SHA-256(timestamp + nonce + encrypt_key || raw body)) — plain SHA-256, not HMAC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK_BYTES = 16


class DecryptionError(ValueError):
    """The ``encrypt`` field is not valid base64 or not a valid AES-256-CBC/PKCS7 ciphertext."""


def derive_key(encrypt_key: str) -> bytes:
    """The AES key Feishu uses: SHA-256 of the configured Encrypt Key."""
    return hashlib.sha256(encrypt_key.encode("utf-8")).digest()


def aes_key(encrypt_key: str) -> algorithms.AES:
    """The AES key object for an Encrypt Key, built once and reused by ``decrypt``."""
    return algorithms.AES(derive_key(encrypt_key))


def decrypt(key: bytes | algorithms.AES, encrypted: str) -> bytes:
    """Decrypt a Feishu ``encrypt`` value with a key from ``derive_key`` (or an ``algorithms.AES`` built
    from it once, which saves its setup on every call); raises ``DecryptionError``."""
    try:
        blob = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecryptionError("encrypt is not valid base64") from exc
    if len(blob) < 2 * BLOCK_BYTES or len(blob) % BLOCK_BYTES:
        raise DecryptionError("encrypt has an invalid length")
    algorithm = key if isinstance(key, algorithms.AES) else algorithms.AES(key)
    decryptor = Cipher(algorithm, modes.CBC(blob[:BLOCK_BYTES])).decryptor()
    padded = decryptor.update(blob[BLOCK_BYTES:]) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= BLOCK_BYTES or padded[-pad:] != bytes([pad]) * pad:
        raise DecryptionError("encrypt has invalid padding (wrong encrypt key?)")
    return padded[:-pad]


def encrypt(key: bytes, plaintext: bytes, iv: bytes | None = None) -> str:
    """The inverse of ``decrypt`` (Feishu's side): used by tests, benchmarks and the demo."""
    iv = os.urandom(BLOCK_BYTES) if iv is None else iv
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode("ascii")


def signature(timestamp: str, nonce: str, encrypt_key: str, raw_body: bytes) -> str:
    """The ``X-Lark-Signature`` Feishu sends for a request body."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode("utf-8") + raw_body).hexdigest()


def signature_matches(expected: str, received: str) -> bool:
    """Constant-time comparison of two signatures (case-insensitive hex)."""
    return hmac.compare_digest(expected.encode("ascii"), received.strip().lower().encode("ascii", "replace"))
