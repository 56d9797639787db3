"""Token verification and minting (PROTOCOL.md, decision 2).

Sans-IO: the current time is always passed in as ``now`` (Unix seconds), so the rules can be tested
without a clock and the caller decides which clock counts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, TypeAlias

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import HMACAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

__all__ = [
    "LEEWAY",
    "OPEN_GRANT_APP",
    "AuthError",
    "Grant",
    "Scope",
    "TokenVerifier",
    "mint_token",
]

Scope: TypeAlias = bool | frozenset[str]
"""True = every stream of the app; a frozenset = those streams; False = none."""

LEEWAY = 30.0
"""Clock skew tolerated on ``exp`` and ``nbf``, in seconds."""

OPEN_GRANT_APP = "*"
"""The app of an open-mode grant: every app (development mode grants everything)."""

MIN_HMAC_SECRET_BYTES = 32
"""RFC 7518 §3.2: an HS256 key should be at least as long as the hash output."""

MIN_RSA_KEY_BITS = 2048

_REFRESH_HINT = "get a new token and send stream.connect again"


class AuthError(Exception):
    """A request refused for its token: ``code`` is 401 (not authenticated) or 403 (not allowed).

    ``message`` is meant for the client's ``err_msg``, so it says what to do and never carries
    library internals.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _scope_allows(scope: Scope, stream: str) -> bool:
    if isinstance(scope, bool):
        return scope
    return stream in scope


@attrs.frozen
class Grant:
    """What a verified token allows; re-checked on every request because tokens expire."""

    app: str
    uid: str | None
    publish: Scope
    play: Scope
    expires_at: float | None

    def check_request(self, app: str, uid: str | None, now: float) -> None:
        """Refuse a request made after expiry (401) or for another app or user (403). `uid` None:
        the request names no user (WHIP, WHEP): the token's is taken."""
        if self.expires_at is not None and self.expires_at <= now - LEEWAY:
            raise AuthError(401, f"token expired; {_REFRESH_HINT}")
        if app != self.app and self.app != OPEN_GRANT_APP:
            raise AuthError(403, f"token is for app {self.app!r}, not {app!r}")
        if self.uid is not None and uid is not None and uid != self.uid:
            raise AuthError(403, f"token is for uid {self.uid!r}, not {uid!r}")

    def check_publish(self, stream: str) -> None:
        """Refuse (403) publishing a stream the token does not name."""
        if not _scope_allows(self.publish, stream):
            raise AuthError(403, f"token does not allow publishing stream {stream!r}")

    def check_play(self, stream: str) -> None:
        """Refuse (403) playing a stream the token does not name."""
        if not _scope_allows(self.play, stream):
            raise AuthError(403, f"token does not allow playing stream {stream!r}")


def _malformed(what: str) -> AuthError:
    return AuthError(401, f"malformed token: {what}; {_REFRESH_HINT}")


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """A finite NumericDate or None: JSON allows ``NaN`` and huge ints, which must not slip by."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"claim {name!r} must be a number")
    try:
        result = float(value)
    except OverflowError:
        raise _malformed(f"claim {name!r} is out of range") from None
    if not math.isfinite(result):
        raise _malformed(f"claim {name!r} must be a finite number")
    return result


def _scope_claim(claims: Mapping[str, Any], name: str) -> Scope:
    value = claims.get(name, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    raise _malformed(f"claim {name!r} must be true, false or a list of stream names")


def _grant_from_claims(claims: Mapping[str, Any], now: float) -> Grant:
    """Apply the protocol's claim rules; PyJWT's time checks are off as they read the clock."""
    expires_at = _numeric_date(claims, "exp")
    not_before = _numeric_date(claims, "nbf")
    if expires_at is not None and expires_at <= now - LEEWAY:
        raise AuthError(401, f"token expired; {_REFRESH_HINT}")
    if not_before is not None and not_before > now + LEEWAY:
        raise AuthError(401, "token not yet valid (nbf is in the future); check the clocks")
    app = claims.get("app")
    if not isinstance(app, str):
        raise _malformed("claim 'app' (string) is required")
    uid = claims.get("uid")
    if "uid" in claims and not isinstance(uid, str):
        raise _malformed("claim 'uid' must be a string")
    return Grant(
        app=app,
        uid=uid,
        publish=_scope_claim(claims, "publish"),
        play=_scope_claim(claims, "play"),
        expires_at=expires_at,
    )


_DECODE_OPTIONS: jwt.types.Options = {
    "verify_signature": True,
    # Time claims are checked against the caller's `now` in _grant_from_claims.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    # The protocol defines no audience or issuer; a foreign `aud` must not fail the token.
    "verify_aud": False,
    "verify_iss": False,
    "require": [],
}


def _public_key_algorithm(public_key_pem: bytes) -> tuple[str, Any]:
    """Pin the algorithm to the key type, so a token's header can never choose it."""
    if b"PRIVATE KEY" in public_key_pem:
        raise ValueError("the configured public key is a private key; configure its public key")
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"cannot read the configured public key (expected PEM 'BEGIN PUBLIC KEY'): {exc}"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_KEY_BITS:
            raise ValueError(
                f"the RSA public key has {key.key_size} bits; at least {MIN_RSA_KEY_BITS} needed"
            )
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(
                f"the EC public key is on curve {key.curve.name}; ES256 needs P-256 (secp256r1)"
            )
        return "ES256", key
    raise ValueError(
        f"unsupported public key type {type(key).__name__}; use RSA (RS256) or EC P-256 (ES256)"
    )


def _check_secret(secret: str) -> bytes:
    key = secret.encode("utf-8")
    if not key:
        raise ValueError("the token secret is empty; set a secret or leave it unset for open mode")
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(key)
    except jwt.InvalidKeyError as exc:
        raise ValueError(f"unusable token secret: {exc}") from None
    if len(key) < MIN_HMAC_SECRET_BYTES:
        warnings.warn(
            f"the token secret is {len(key)} bytes; use at least {MIN_HMAC_SECRET_BYTES} "
            "random bytes for HS256",
            InsecureKeyLengthWarning,
            stacklevel=3,
        )
    return key


@attrs.frozen
class TokenVerifier:
    """Verifies tokens; with no key configured it is in open development mode."""

    LEEWAY: ClassVar[float] = LEEWAY

    _algorithm: str | None
    _key: Any = attrs.field(repr=False)

    @classmethod
    def from_settings(cls, secret: str | None, public_key_pem: bytes | None) -> TokenVerifier:
        """Build from configuration: a secret (HS256), a public key (RS256/ES256), or neither."""
        if secret is not None and public_key_pem is not None:
            raise ValueError(
                "configure either a token secret (HS256) or a public key (RS256/ES256), not both"
            )
        if secret is not None:
            return cls(algorithm="HS256", key=_check_secret(secret))
        if public_key_pem is not None:
            algorithm, key = _public_key_algorithm(public_key_pem)
            return cls(algorithm=algorithm, key=key)
        return cls(algorithm=None, key=None)

    @property
    def open_mode(self) -> bool:
        """True when no key is configured and every token grants everything."""
        return self._algorithm is None

    @property
    def algorithm(self) -> str | None:
        """The only JWS algorithm accepted, or None in open mode."""
        return self._algorithm

    def verify(self, token: str, app: str, uid: str | None, now: float) -> Grant:
        """Turn a client's token into a Grant for this request, or raise AuthError (401/403)."""
        if self._algorithm is None:
            return Grant(app=OPEN_GRANT_APP, uid=None, publish=True, play=True, expires_at=None)
        grant = _grant_from_claims(self._decode(token), now)
        grant.check_request(app, uid, now)
        return grant

    def _decode(self, token: str) -> dict[str, Any]:
        assert self._algorithm is not None
        if not isinstance(token, str) or not token:
            raise AuthError(401, "no token; send stream.connect with a token")
        try:
            token_bytes = token.encode("ascii")
        except UnicodeEncodeError:
            raise _malformed("not a JWT") from None
        try:
            with warnings.catch_warnings():
                # PyJWT would warn on every call about a short secret; from_settings warned once.
                warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                claims = jwt.decode(
                    token_bytes, self._key, algorithms=[self._algorithm], options=_DECODE_OPTIONS
                )
        except jwt.InvalidSignatureError:
            raise AuthError(401, f"bad token signature; {_REFRESH_HINT}") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(
                401, f"token algorithm not accepted (this server accepts only {self._algorithm})"
            ) from None
        except Exception:
            # Untrusted input: jwt.PyJWTError or whatever else the library trips over is still
            # just a bad token, and its text is not for the client.
            raise _malformed("not a valid JWT") from None
        return claims


def _scope_to_claim(scope: Scope) -> bool | list[str]:
    if isinstance(scope, bool):
        return scope
    return sorted(scope)


def mint_token(
    secret: str,
    app: str,
    *,
    uid: str | None = None,
    publish: Scope = False,
    play: Scope = False,
    ttl: float | None = 3600.0,
    now: float,
) -> str:
    """Mint an HS256 token (development command, tests); ``ttl=None`` means it never expires."""
    if not secret:
        raise ValueError("cannot mint a token with an empty secret")
    claims: dict[str, Any] = {"app": app, "iat": math.floor(now), "nbf": math.floor(now)}
    if uid is not None:
        claims["uid"] = uid
    if publish is not False:
        claims["publish"] = _scope_to_claim(publish)
    if play is not False:
        claims["play"] = _scope_to_claim(play)
    if ttl is not None:
        claims["exp"] = math.floor(now + ttl)
    try:
        return jwt.encode(claims, secret, algorithm="HS256")
    except jwt.InvalidKeyError as exc:
        raise ValueError(f"unusable token secret: {exc}") from None
