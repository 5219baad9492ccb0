"""Passwords, tokens and the sign-in rate limiter, each on its own."""

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.auth.passwords import hash_password, verify_password
from server.auth.ratelimit import SignInLimiter
from server.auth.tokens import TokenSigner, TokenVerifier, generate_signing_key, key_id
from shared.errors import AuthError, RateLimited, TokenExpired
from shared.protocol.models import Scope

DEVICE = "0123456789abcdef0123456789abcdef"


def signer_and_verifier(issuer: str = "cairn-test") -> tuple[TokenSigner, TokenVerifier]:
    key = Ed25519PrivateKey.generate()
    return TokenSigner(key, issuer, 3600), TokenVerifier(key.public_key(), issuer)


def test_password_hash_verifies_only_the_same_password() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct horse ")
    assert not verify_password(None, "correct horse")  # unknown user: same cost, never true
    assert not verify_password(stored, "x" * 5000)


def test_password_hash_refuses_empty() -> None:
    with pytest.raises(ValueError):
        hash_password("")


def test_token_round_trip_keeps_every_claim() -> None:
    signer, verifier = signer_and_verifier()
    token, claims = signer.issue("alice", 7, DEVICE, (Scope.BACKUP,), ("laptop",))
    assert verifier.verify(token) == claims
    assert claims.expires_at - claims.issued_at == 3600


def test_token_is_a_standard_eddsa_jwt(tmp_path) -> None:
    generate_signing_key(tmp_path / "signing.pem")
    private = serialization.load_pem_private_key((tmp_path / "signing.pem").read_bytes(), None)
    assert isinstance(private, Ed25519PrivateKey)
    assert (tmp_path / "signing.pem").stat().st_mode & 0o777 == 0o600
    token, _ = TokenSigner(private, "iss", 60).issue("bob", 1, DEVICE, (Scope.RESTORE,), ("*",))
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["kid"] == key_id(private.public_key())
    # Any stock JWT library verifies it with the published public key.
    public = serialization.load_pem_public_key((tmp_path / "signing.pub").read_bytes())
    payload = jwt.decode(token, public, algorithms=["EdDSA"], issuer="iss")  # type: ignore[arg-type]
    assert payload["sub"] == "bob" and payload["scopes"] == ["restore"]


def test_expired_token_is_refused_as_expired() -> None:
    signer, verifier = signer_and_verifier()
    token, _ = signer.issue("alice", 1, DEVICE, (Scope.BACKUP,), ("*",),
                            now=time.time() - 7200, lifetime=60)
    with pytest.raises(TokenExpired):
        verifier.verify(token)


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB"),  # bad signature
    lambda t: t.split(".")[0] + ".e30." + t.split(".")[2],  # payload swapped
    lambda t: "garbage",
    lambda t: "",
])
def test_garbled_token_is_refused(mangle) -> None:
    signer, verifier = signer_and_verifier()
    token, _ = signer.issue("alice", 1, DEVICE, (Scope.BACKUP,), ("*",))
    with pytest.raises(AuthError) as info:
        verifier.verify(mangle(token))
    assert not isinstance(info.value, TokenExpired)


def test_token_of_another_server_is_refused() -> None:
    signer, _ = signer_and_verifier()
    _, verifier = signer_and_verifier()
    token, _ = signer.issue("alice", 1, DEVICE, (Scope.BACKUP,), ("*",))
    with pytest.raises(AuthError):
        verifier.verify(token)


def test_token_with_another_issuer_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    token, _ = TokenSigner(key, "other", 60).issue("alice", 1, DEVICE, (Scope.BACKUP,), ("*",))
    with pytest.raises(AuthError):
        TokenVerifier(key.public_key(), "mine").verify(token)


def test_unsigned_and_symmetric_tokens_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    verifier = TokenVerifier(key.public_key(), "iss")
    claims = {"iss": "iss", "sub": "alice", "uid": 1, "dev": DEVICE, "scopes": ["maintain"],
              "vaults": ["*"], "iat": int(time.time()), "exp": int(time.time()) + 60}
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for token in (jwt.encode(claims, None, algorithm="none"),
                  jwt.encode(claims, raw, algorithm="HS256")):
        with pytest.raises(AuthError):
            verifier.verify(token)


@pytest.mark.parametrize("claim, value", [
    ("uid", "1"), ("dev", "not-hex"), ("scopes", ["root"]), ("scopes", []), ("vaults", ["../x"]),
    ("sub", "Bad Name"),
])
def test_token_with_malformed_claims_is_refused(claim, value) -> None:
    key = Ed25519PrivateKey.generate()
    claims = {"iss": "iss", "sub": "alice", "uid": 1, "dev": DEVICE, "scopes": ["backup"],
              "vaults": ["*"], "iat": int(time.time()), "exp": int(time.time()) + 60}
    claims[claim] = value
    token = jwt.encode(claims, key, algorithm="EdDSA")
    with pytest.raises(AuthError, match="malformed"):
        TokenVerifier(key.public_key(), "iss").verify(token)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_blocks_a_user_after_max_failures_from_any_address() -> None:
    clock = FakeClock()
    limiter = SignInLimiter(3, 60, clock)
    for i in range(3):
        limiter.check("alice", f"10.0.0.{i}")
        limiter.failed("alice", f"10.0.0.{i}")
    with pytest.raises(RateLimited) as info:
        limiter.check("alice", "10.0.0.99")
    assert 0 < info.value.retry_after <= 60
    limiter.check("bob", "10.0.0.99")  # other users from fresh addresses are unaffected


def test_limiter_blocks_an_address_guessing_many_users() -> None:
    limiter = SignInLimiter(3, 60, FakeClock())
    for name in ("a", "b", "c"):
        limiter.failed(name, "10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.check("d", "10.0.0.1")


def test_limiter_forgets_failures_after_the_window() -> None:
    clock = FakeClock()
    limiter = SignInLimiter(2, 60, clock)
    limiter.failed("alice", "a")
    limiter.failed("alice", "a")
    with pytest.raises(RateLimited):
        limiter.check("alice", "a")
    clock.now += 61
    limiter.check("alice", "a")


def test_limiter_success_clears_the_user_but_not_the_address() -> None:
    limiter = SignInLimiter(2, 60, FakeClock())
    limiter.failed("alice", "a")
    limiter.failed("alice", "a")
    limiter.succeeded("alice")
    limiter.check("alice", "b")
    with pytest.raises(RateLimited):
        limiter.check("alice", "a")
