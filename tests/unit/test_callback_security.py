"""Replay and spoofing: constant-time comparisons, the timestamp window, the size gate before any work,
and the challenge path that must not become a way around verification."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from feishu_mirror import crypto
from feishu_mirror.callback import MAX_BODY_BYTES, CallbackVerifier, Challenge, ChangeNotice
from feishu_mirror.errors import CallbackRejected
from tests import fuzzing

KEY = "security-encrypt-key"
TOKEN = "security-verification-token"
APP_ID = "cli_security_app"
NOW = 1_800_000_000


def verifier(*, max_skew_seconds: int = 300, max_ahead_seconds: int = 300, encrypt_key: str = KEY) -> CallbackVerifier:
    return CallbackVerifier(
        encrypt_key=encrypt_key,
        verification_token=TOKEN,
        app_id=APP_ID,
        max_skew_seconds=max_skew_seconds,
        max_ahead_seconds=max_ahead_seconds,
        clock=lambda: NOW + 0.5,
    )


def sealed_request(
    payload: dict[str, Any], *, timestamp: int = NOW, nonce: str = "nonce-1"
) -> tuple[dict[str, str], bytes]:
    body = fuzzing.sealed(KEY, fuzzing.as_plaintext(payload))
    return fuzzing.signed_headers(KEY, body, str(timestamp), nonce), body


def refusal(v: CallbackVerifier, headers: dict[str, str], body: bytes) -> CallbackRejected:
    with pytest.raises(CallbackRejected) as caught:
        v.verify(headers, body)
    return caught.value


class Spy:
    """Wraps a function, records each call's arguments, and calls through."""

    def __init__(self, wrapped: Callable[..., Any]) -> None:
        self.wrapped = wrapped
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(args)
        return self.wrapped(*args, **kwargs)


@pytest.fixture
def compare_digest(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy(hmac.compare_digest)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    return spy


def compared(spy: Spy, value: bytes) -> bool:
    """Whether ``value`` was one side of a ``hmac.compare_digest`` call."""
    return any(value in (bytes(a), bytes(b)) for a, b in spy.calls)


# ------------------------------------------------------------------ constant-time comparisons


def test_token_and_signature_are_compared_with_compare_digest(compare_digest: Spy) -> None:
    # GIVEN a genuine signed event
    headers, body = sealed_request(fuzzing.calendar_changed(TOKEN, APP_ID))
    # WHEN it is verified
    assert isinstance(verifier().verify(headers, body), ChangeNotice)
    # THEN both the signature and the verification token went through hmac.compare_digest
    assert compared(compare_digest, headers["x-lark-signature"].encode())
    assert compared(compare_digest, TOKEN.encode())


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "url_verification", "challenge": "c", "token": "guess-" + TOKEN},
        fuzzing.calendar_changed("guess-" + TOKEN, APP_ID),
        {"uuid": "u-1", "type": "event_callback", "token": "guess-" + TOKEN},
    ],
    ids=["challenge", "v2-event", "v1-event"],
)
def test_a_wrong_token_is_refused_through_compare_digest(compare_digest: Spy, payload: dict[str, Any]) -> None:
    # GIVEN a body carrying a guessed token (an attacker probing it byte by byte)
    headers, body = sealed_request(payload)
    # WHEN verified THEN it is refused, and the guess was compared in constant time against the token
    assert refusal(verifier(), headers, body).reason == "verification token mismatch"
    assert any(bytes(a) == b"guess-" + TOKEN.encode() and bytes(b) == TOKEN.encode() for a, b in compare_digest.calls)


def test_a_wrong_signature_is_refused_through_compare_digest(compare_digest: Spy) -> None:
    # GIVEN a signed event whose signature an attacker replaced with a guess
    headers, body = sealed_request(fuzzing.calendar_changed(TOKEN, APP_ID))
    guess = "a" * 64
    headers["x-lark-signature"] = guess
    # WHEN verified THEN it is refused, and the guess was compared in constant time
    assert refusal(verifier(), headers, body).reason == "signature mismatch"
    assert compared(compare_digest, guess.encode())


# ------------------------------------------------------------------ replay window


@pytest.mark.parametrize(("skew", "ahead"), [(60, 60), (120, 30)])
def test_timestamps_are_accepted_exactly_within_the_configured_window(skew: int, ahead: int) -> None:
    # GIVEN a verifier accepting timestamps up to skew seconds old (CALLBACK_MAX_SKEW_SECONDS) and ahead
    # seconds in the future (CALLBACK_MAX_AHEAD_SECONDS), the clock at NOW + 0.5
    v = verifier(max_skew_seconds=skew, max_ahead_seconds=ahead)
    payload = fuzzing.calendar_changed(TOKEN, APP_ID)
    for offset in (-skew, 0, ahead):
        # WHEN a request signed at the edges of the window arrives THEN it is accepted
        assert isinstance(v.verify(*sealed_request(payload, timestamp=NOW + offset)), ChangeNotice)
    for offset in (-skew - 1, ahead + 1, -10 * skew, 10**6):
        # WHEN one signed just outside (or far outside) arrives THEN it is refused as stale
        refused = refusal(v, *sealed_request(payload, timestamp=NOW + offset))
        assert (refused.status, refused.reason) == (401, "stale timestamp")


def test_a_replayed_body_with_its_own_signature_is_refused_once_the_window_has_passed() -> None:
    # GIVEN a genuine request captured by an attacker
    headers, body = sealed_request(fuzzing.calendar_changed(TOKEN, APP_ID), timestamp=NOW - 3600)
    # WHEN it is replayed an hour later THEN it is refused: the signature binds the old timestamp
    assert refusal(verifier(), headers, body).reason == "stale timestamp"
    # AND re-dating it breaks the signature
    headers["x-lark-request-timestamp"] = str(NOW)
    assert refusal(verifier(), headers, body).reason == "signature mismatch"


def test_the_signature_binds_the_nonce_and_every_byte_of_the_body() -> None:
    headers, body = sealed_request(fuzzing.calendar_changed(TOKEN, APP_ID))
    # GIVEN the same signature over a different nonce, or over a body with one byte changed
    other_nonce = {**headers, "x-lark-request-nonce": "nonce-2"}
    flipped = body[:-3] + bytes([body[-3] ^ 1]) + body[-2:]
    # WHEN verified THEN both are refused
    assert refusal(verifier(), other_nonce, body).reason == "signature mismatch"
    assert refusal(verifier(), headers, flipped).reason == "signature mismatch"


# ------------------------------------------------------------------ size gate


def test_an_oversized_body_is_refused_before_any_parsing_hashing_or_decryption(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a genuinely signed and encrypted event padded past the size limit
    payload = {**fuzzing.calendar_changed(TOKEN, APP_ID), "padding": "x" * MAX_BODY_BYTES}
    headers, body = sealed_request(payload)
    assert len(body) > MAX_BODY_BYTES
    spies = {"json.loads": Spy(json.loads), "decrypt": Spy(crypto.decrypt), "signature": Spy(crypto.signature)}
    monkeypatch.setattr(json, "loads", spies["json.loads"])
    monkeypatch.setattr(crypto, "decrypt", spies["decrypt"])
    monkeypatch.setattr(crypto, "signature", spies["signature"])
    # WHEN verified
    refused = refusal(verifier(), headers, body)
    # THEN it is a 413, and no JSON was parsed, no hash computed and nothing decrypted
    assert (refused.status, refused.reason) == (413, "body too large")
    assert {name: spy.calls for name, spy in spies.items()} == {"json.loads": [], "decrypt": [], "signature": []}


def test_the_size_spies_do_see_the_work_for_a_body_under_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the same spies WHEN a normal event is verified THEN they see it parsed, hashed and decrypted
    # (so the test above would notice the work if it happened)
    spies = {"json.loads": Spy(json.loads), "decrypt": Spy(crypto.decrypt), "signature": Spy(crypto.signature)}
    monkeypatch.setattr(json, "loads", spies["json.loads"])
    monkeypatch.setattr(crypto, "decrypt", spies["decrypt"])
    monkeypatch.setattr(crypto, "signature", spies["signature"])
    assert isinstance(verifier().verify(*sealed_request(fuzzing.calendar_changed(TOKEN, APP_ID))), ChangeNotice)
    assert all(spy.calls for spy in spies.values())


# ------------------------------------------------------------------ the challenge path


def test_a_plaintext_challenge_is_refused_even_when_signed_with_the_right_key() -> None:
    # GIVEN an app with an encrypt key, and a plaintext url_verification — unsigned or validly signed
    body = json.dumps({"type": "url_verification", "challenge": "c-1", "token": TOKEN}).encode()
    for headers in ({}, fuzzing.signed_headers(KEY, body, str(NOW))):
        # WHEN verified THEN it is refused: with a key configured every body must be encrypted
        refused = refusal(verifier(), headers, body)
        assert (refused.status, refused.reason) == (400, "body must be encrypted")


@pytest.mark.parametrize("token", ["wrong", "", None, 0, [TOKEN], {"token": TOKEN}, TOKEN.upper(), TOKEN + "\x00"])
def test_an_encrypted_challenge_with_a_wrong_token_is_refused(token: Any) -> None:
    # GIVEN an encrypted (unsigned, as Feishu sends it) challenge with a wrong or missing token
    payload = {"type": "url_verification", "challenge": "c-1", "token": token}
    body = fuzzing.sealed(KEY, fuzzing.as_plaintext(payload))
    # WHEN verified THEN 401
    assert (refusal(verifier(), {}, body).status, refusal(verifier(), {}, body).reason) == (
        401,
        "verification token mismatch",
    )


def test_a_challenge_encrypted_with_another_key_is_refused() -> None:
    # GIVEN a challenge with the right token, encrypted with a key the attacker chose
    body = fuzzing.sealed(
        "attacker-key", fuzzing.as_plaintext({"type": "url_verification", "challenge": "c", "token": TOKEN})
    )
    # WHEN verified THEN it cannot be decrypted, so it is refused
    assert refusal(verifier(), {}, body).reason == "encrypt could not be decrypted to a JSON object"


def test_an_event_disguised_as_url_verification_is_only_ever_a_challenge() -> None:
    # GIVEN a calendar change with "type": "url_verification" added, encrypted but unsigned
    disguised = {
        **fuzzing.calendar_changed(TOKEN, APP_ID),
        "type": "url_verification",
        "challenge": "c-1",
        "token": TOKEN,
    }
    body = fuzzing.sealed(KEY, fuzzing.as_plaintext(disguised))
    # WHEN verified THEN the answer is the challenge echo, never a calendar change to dispatch
    assert verifier().verify({}, body) == Challenge("c-1")
    # AND with signature headers it is still just a challenge
    assert verifier().verify(fuzzing.signed_headers(KEY, body, str(NOW)), body) == Challenge("c-1")


def test_an_unsigned_encrypted_event_is_refused() -> None:
    # GIVEN a genuine encrypted event whose signature headers were stripped (only challenges come unsigned)
    _, body = sealed_request(fuzzing.calendar_changed(TOKEN, APP_ID))
    # WHEN verified THEN 401
    assert (refusal(verifier(), {}, body).status, refusal(verifier(), {}, body).reason) == (
        401,
        "missing signature headers",
    )
