"""Token rules of PROTOCOL.md decision 2: who may connect, publish and play."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.signaling.auth import (
    LEEWAY,
    OPEN_GRANT_APP,
    AuthError,
    Grant,
    TokenVerifier,
    mint_token,
)

SECRET = "0123456789abcdef0123456789abcdef-test-secret"
NOW = 1_700_000_000.0


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier.from_settings(SECRET, None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_token(key: bytes, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """Sign by hand, so tests can make tokens PyJWT refuses to make."""
    header = header if header is not None else {"alg": "HS256", "typ": "JWT"}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def expect_auth_error(code: int, verifier: TokenVerifier, token: str, **kw: Any) -> AuthError:
    app = kw.pop("app", "live")
    uid = kw.pop("uid", "alice")
    now = kw.pop("now", NOW)
    with pytest.raises(AuthError) as info:
        verifier.verify(token, app, uid, now)
    assert info.value.code == code
    assert info.value.message
    assert "Traceback" not in info.value.message
    return info.value


# --- round trip and scopes -------------------------------------------------------------------


def test_hs256_round_trip(verifier: TokenVerifier) -> None:
    token = mint_token(
        SECRET, "live", uid="alice", publish=True, play=frozenset({"b", "a"}), now=NOW
    )
    grant = verifier.verify(token, "live", "alice", NOW)
    assert grant == Grant(
        app="live",
        uid="alice",
        publish=True,
        play=frozenset({"a", "b"}),
        expires_at=NOW + 3600,
    )
    assert verifier.algorithm == "HS256"
    assert not verifier.open_mode


def test_mint_claims_shape() -> None:
    token = mint_token(SECRET, "live", publish=frozenset({"z", "a"}), ttl=None, now=NOW)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_nbf": False})
    assert claims == {"app": "live", "publish": ["a", "z"], "iat": int(NOW), "nbf": int(NOW)}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_mint_true_scope_and_omitted_false() -> None:
    token = mint_token(SECRET, "live", publish=True, play=False, now=NOW)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["publish"] is True
    assert "play" not in claims
    assert "uid" not in claims
    assert claims["exp"] == int(NOW + 3600)


def test_open_mode_grants_anything() -> None:
    verifier = TokenVerifier.from_settings(None, None)
    assert verifier.open_mode
    assert verifier.algorithm is None
    for token in ["", "garbage", mint_token(SECRET, "other", now=NOW)]:
        grant = verifier.verify(token, "live", "anyone", NOW)
        assert grant == Grant(
            app=OPEN_GRANT_APP, uid=None, publish=True, play=True, expires_at=None
        )
        grant.check_publish("s1")
        grant.check_play("s2")
        grant.check_request("live", "someone-else", NOW + 10**9)
        grant.check_request("another-app", "anyone", NOW)


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        (True, True),
        (False, False),
        (None, False),  # absent
        (["s1", "s2"], frozenset({"s1", "s2"})),
        ([], frozenset()),
    ],
)
def test_scope_claims(verifier: TokenVerifier, claim: Any, expected: Any) -> None:
    claims: dict[str, Any] = {"app": "live"}
    if claim is not None:
        claims["publish"] = claim
        claims["play"] = claim
    grant = verifier.verify(hs256_token(SECRET.encode(), claims), "live", "alice", NOW)
    assert grant.publish == expected
    assert grant.play == expected
    assert grant.expires_at is None
    assert grant.uid is None


def test_check_publish_and_play_with_lists() -> None:
    grant = Grant(
        app="live",
        uid=None,
        publish=frozenset({"cam"}),
        play=frozenset({"a", "b"}),
        expires_at=None,
    )
    grant.check_publish("cam")
    grant.check_play("a")
    grant.check_play("b")
    for check, stream in [
        (grant.check_publish, "a"),
        (grant.check_play, "cam"),
        (grant.check_play, ""),
    ]:
        with pytest.raises(AuthError) as info:
            check(stream)
        assert info.value.code == 403


def test_false_scope_refuses() -> None:
    grant = Grant(app="live", uid=None, publish=False, play=True, expires_at=None)
    grant.check_play("anything")
    with pytest.raises(AuthError) as info:
        grant.check_publish("anything")
    assert info.value.code == 403


# --- app and uid binding ---------------------------------------------------------------------


def test_uid_binding(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, "live", uid="alice", play=True, now=NOW)
    assert verifier.verify(token, "live", "alice", NOW).uid == "alice"
    error = expect_auth_error(403, verifier, token, uid="mallory")
    assert "alice" in error.message


def test_token_without_uid_accepts_any_uid(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, "live", play=True, now=NOW)
    for uid in ["alice", "bob", ""]:
        assert verifier.verify(token, "live", uid, NOW).uid is None


def test_token_for_another_app_is_403(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, "other", uid="alice", publish=True, now=NOW)
    expect_auth_error(403, verifier, token, app="live")


def test_check_request_order_and_codes() -> None:
    grant = Grant(app="live", uid="alice", publish=True, play=True, expires_at=NOW)
    grant.check_request("live", "alice", NOW)
    for app, uid in [("other", "alice"), ("live", "bob")]:
        with pytest.raises(AuthError) as info:
            grant.check_request(app, uid, NOW)
        assert info.value.code == 403
    # Expiry is reported before the mismatch: the client's fix is to get a new token.
    with pytest.raises(AuthError) as info:
        grant.check_request("other", "bob", NOW + LEEWAY + 1)
    assert info.value.code == 401


# --- time ------------------------------------------------------------------------------------


def test_expired_beyond_leeway_is_401(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, "live", play=True, ttl=60, now=NOW)
    error = expect_auth_error(401, verifier, token, now=NOW + 60 + LEEWAY + 1)
    assert "expired" in error.message


def test_expired_within_leeway_is_accepted(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, "live", play=True, ttl=60, now=NOW)
    grant = verifier.verify(token, "live", "alice", NOW + 60 + LEEWAY - 1)
    assert grant.expires_at == NOW + 60
    assert TokenVerifier.LEEWAY == LEEWAY == 30.0


def test_nbf_in_future_beyond_leeway_is_401(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, "live", play=True, now=NOW + 100)
    error = expect_auth_error(401, verifier, token, now=NOW)
    assert "not yet valid" in error.message


def test_nbf_in_future_within_leeway_is_accepted(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, "live", play=True, now=NOW + LEEWAY - 1)
    verifier.verify(token, "live", "alice", NOW)


def test_grant_check_request_expires_later(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, "live", play=True, ttl=60, now=NOW)
    grant = verifier.verify(token, "live", "alice", NOW)
    grant.check_request("live", "alice", NOW + 60 + LEEWAY - 1)
    with pytest.raises(AuthError) as info:
        grant.check_request("live", "alice", NOW + 60 + LEEWAY)
    assert info.value.code == 401
    assert "expired" in info.value.message


def test_verify_uses_given_now_not_the_clock(verifier: TokenVerifier) -> None:
    """A token valid long ago is valid at that `now`, whatever the wall clock says."""
    token = mint_token(SECRET, "live", play=True, ttl=60, now=1000.0)
    assert verifier.verify(token, "live", "alice", 1000.0).expires_at == 1060.0
    expect_auth_error(401, verifier, token, now=NOW)


@pytest.mark.parametrize("value", ["soon", True, None, [1], {"a": 1}, 10**400])
def test_bad_exp_type_is_401(verifier: TokenVerifier, value: Any) -> None:
    token = hs256_token(SECRET.encode(), {"app": "live", "exp": value})
    expect_auth_error(401, verifier, token)


def test_non_finite_exp_is_401(verifier: TokenVerifier) -> None:
    # Python's json (and so PyJWT) accepts NaN; NaN compares false to everything.
    for literal in ["NaN", "Infinity"]:
        header = b64url(b'{"alg":"HS256"}')
        payload = b64url(f'{{"app":"live","exp":{literal},"nbf":{literal}}}'.encode())
        signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
        token = f"{header}.{payload}.{b64url(signature.digest())}"
        expect_auth_error(401, verifier, token)


# --- forgery ---------------------------------------------------------------------------------


def test_tampered_payload_is_401(verifier: TokenVerifier) -> None:
    token = mint_token(SECRET, "live", uid="alice", play=frozenset({"a"}), now=NOW)
    header, _, signature = token.split(".")
    forged = b64url(json.dumps({"app": "live", "uid": "alice", "publish": True}).encode())
    error = expect_auth_error(401, verifier, f"{header}.{forged}.{signature}")
    assert "signature" in error.message


def test_wrong_secret_is_401(verifier: TokenVerifier) -> None:
    token = mint_token("another-secret-that-is-long-enough-000", "live", play=True, now=NOW)
    error = expect_auth_error(401, verifier, token)
    assert "signature" in error.message


def test_alg_none_is_401(verifier: TokenVerifier) -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"app": "live", "publish": True, "play": True}).encode())
    expect_auth_error(401, verifier, f"{header}.{payload}.")


def test_alg_none_is_401_for_public_key_verifier() -> None:
    public_pem = rsa_pair()[1]
    verifier = TokenVerifier.from_settings(None, public_pem)
    header = b64url(json.dumps({"alg": "none"}).encode())
    payload = b64url(json.dumps({"app": "live", "publish": True}).encode())
    expect_auth_error(401, verifier, f"{header}.{payload}.")


def test_hs256_with_public_key_as_secret_is_401() -> None:
    """Algorithm confusion: the RSA public key is public, so it must never work as an HMAC key."""
    public_pem = rsa_pair()[1]
    verifier = TokenVerifier.from_settings(None, public_pem)
    assert verifier.algorithm == "RS256"
    token = hs256_token(public_pem, {"app": "live", "publish": True, "play": True})
    error = expect_auth_error(401, verifier, token)
    assert "RS256" in error.message


def test_other_hmac_algorithm_is_401(verifier: TokenVerifier) -> None:
    token = jwt.encode({"app": "live"}, SECRET + SECRET, algorithm="HS512")
    expect_auth_error(401, verifier, token)


# --- public keys -----------------------------------------------------------------------------


def rsa_pair() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, public_pem_of(key)


def public_pem_of(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_rs256_round_trip() -> None:
    key, public_pem = rsa_pair()
    verifier = TokenVerifier.from_settings(None, public_pem)
    claims = {"app": "live", "uid": "alice", "publish": ["cam"], "exp": int(NOW) + 60}
    token = jwt.encode(claims, key, algorithm="RS256")
    grant = verifier.verify(token, "live", "alice", NOW)
    assert grant == Grant(
        app="live", uid="alice", publish=frozenset({"cam"}), play=False, expires_at=NOW + 60
    )
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    expect_auth_error(401, verifier, jwt.encode(claims, other_key, algorithm="RS256"))
    # The key pins the algorithm: a valid PS256 signature by the same key is refused.
    expect_auth_error(401, verifier, jwt.encode(claims, key, algorithm="PS256"))


def test_es256_round_trip() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = TokenVerifier.from_settings(None, public_pem_of(key))
    assert verifier.algorithm == "ES256"
    token = jwt.encode({"app": "live", "play": True}, key, algorithm="ES256")
    grant = verifier.verify(token, "live", "bob", NOW)
    assert grant.play is True
    assert grant.publish is False
    other = ec.generate_private_key(ec.SECP256R1())
    expect_auth_error(401, verifier, jwt.encode({"app": "live"}, other, algorithm="ES256"))
    expect_auth_error(401, verifier, mint_token(SECRET, "live", play=True, now=NOW))


def test_from_settings_rejects_bad_configuration() -> None:
    _, public_pem = rsa_pair()
    with pytest.raises(ValueError, match="not both"):
        TokenVerifier.from_settings(SECRET, public_pem)
    with pytest.raises(ValueError, match="empty"):
        TokenVerifier.from_settings("", None)
    with pytest.raises(ValueError, match="public key"):
        TokenVerifier.from_settings(None, b"not a pem")
    with pytest.raises(ValueError, match="P-256"):
        TokenVerifier.from_settings(None, public_pem_of(ec.generate_private_key(ec.SECP384R1())))
    private_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="private key"):
        TokenVerifier.from_settings(None, private_pem)
    # A PEM pasted into the secret setting would make HS256 forgeable by anyone with the key.
    with pytest.raises(ValueError, match="secret"):
        TokenVerifier.from_settings(public_pem.decode(), None)


def test_short_secret_warns_once_at_configuration() -> None:
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        verifier = TokenVerifier.from_settings("short", None)
    token = hs256_token(b"short", {"app": "live", "play": True})
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        # mint_token is PyJWT encoding, which warns per call; fine for a development command.
        assert mint_token("short", "live", now=NOW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verifier.verify(token, "live", "u", NOW).play is True


# --- malformed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"app": 1},
        {},
        {"app": None},
        {"app": "live", "play": "x"},
        {"app": "live", "play": 1},
        {"app": "live", "play": None},
        {"app": "live", "publish": ["a", 1]},
        {"app": "live", "publish": {"a": True}},
        {"app": "live", "uid": 7},
        {"app": "live", "uid": None},
        {"app": "live", "nbf": "yesterday"},
    ],
)
def test_wrong_claim_types_are_401(verifier: TokenVerifier, claims: dict[str, Any]) -> None:
    error = expect_auth_error(401, verifier, hs256_token(SECRET.encode(), claims))
    assert "malformed" in error.message


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c",
        "...",
        "x" * 10240,
        ".".join(["A" * 4000] * 3),
        "\udcff.\x00.é",
        b64url(b"[]") + "." + b64url(b"[]") + ".",
        b64url(b'{"alg":"HS256"}') + "." + b64url(b"[1,2]") + ".AAAA",
        b64url(b'{"alg":"HS256","crit":["exp"]}') + "." + b64url(b"{}") + ".AAAA",
    ],
)
def test_garbage_is_401(verifier: TokenVerifier, token: str) -> None:
    expect_auth_error(401, verifier, token)


def test_non_object_payload_with_valid_signature_is_401(verifier: TokenVerifier) -> None:
    header = b64url(b'{"alg":"HS256"}')
    payload = b64url(b'["app","live"]')
    signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    expect_auth_error(401, verifier, f"{header}.{payload}.{b64url(signature.digest())}")


@given(st.text(max_size=2000))
def test_any_text_token_is_auth_error_401(token: str) -> None:
    verifier = TokenVerifier.from_settings(SECRET, None)
    with pytest.raises(AuthError) as info:
        verifier.verify(token, "live", "alice", NOW)
    assert info.value.code == 401


@given(st.lists(st.text(max_size=300), min_size=1, max_size=4))
def test_any_dotted_text_token_is_auth_error_401(parts: list[str]) -> None:
    verifier = TokenVerifier.from_settings(SECRET, None)
    token = ".".join(b64url(part.encode("utf-8", "surrogatepass")) for part in parts)
    with pytest.raises(AuthError) as info:
        verifier.verify(token, "live", "alice", NOW)
    assert info.value.code == 401


def test_auth_error_fields() -> None:
    error = AuthError(403, "not allowed")
    assert (error.code, error.message) == (403, "not allowed")
    assert isinstance(error, Exception)
