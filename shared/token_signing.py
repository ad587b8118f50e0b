"""Signing pushq's own JWTs: the keys, the service-token claim, ``POST /oauth/token``'s issuer and ``mint_token``.

Used by the API (the token endpoint, and the verifier that must accept what pushq
signs) and by the CLI (``pushq token``). Verification stays in ``api/auth.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from shared.config import ConfigError, Settings

SEND_SCOPE = "push:send"

_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1", "ES521": "secp521r1",
              "ES256K": "secp256k1"}


# -- keys ----------------------------------------------------------------------


def is_symmetric(algorithm: str) -> bool:
    return algorithm.startswith("HS")


def key_fits_algorithm(key: Any, algorithm: str) -> bool:
    """Whether an asymmetric key (public or private) can verify or sign ``algorithm``."""
    if algorithm.startswith(("RS", "PS")):
        return isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey))
    if algorithm in _EC_CURVES:
        return (isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey))
                and key.curve.name == _EC_CURVES[algorithm])
    if algorithm == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey,
                                ed448.Ed448PublicKey, ed448.Ed448PrivateKey))
    return False


def jwk_thumbprint(public_key: Any) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public key, base64url: pushq's own ``kid``."""
    members: tuple[str, ...]
    if isinstance(public_key, rsa.RSAPublicKey):
        jwk, members = RSAAlgorithm.to_jwk(public_key, as_dict=True), ("e", "kty", "n")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk, members = ECAlgorithm.to_jwk(public_key, as_dict=True), ("crv", "kty", "x", "y")
    else:
        jwk, members = OKPAlgorithm.to_jwk(public_key, as_dict=True), ("crv", "kty", "x")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def public_jwk(public_key: Any, algorithm: str) -> dict[str, Any]:
    """The JWK an operator publishes so that other verifiers accept pushq's own tokens."""
    if isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    return {**jwk, "kid": jwk_thumbprint(public_key), "use": "sig", "alg": algorithm}


@dataclass(frozen=True)
class SigningKey:
    """What ``POST /oauth/token`` signs with."""

    key: Any  # a private key object, or the HS* secret
    algorithm: str
    kid: str | None  # the RFC 7638 thumbprint (asymmetric keys only)
    public_key: Any | None


def load_signing_key(settings: Settings) -> SigningKey | None:
    """``PUSHQ_TOKEN_SIGNING_KEY`` with the first fitting asymmetric algorithm, else JWT_SECRET with the first HS*.

    None when neither can sign (the built-in token endpoint is then disabled). A
    signing key that is set but unusable is a configuration error, never a silent fallback.
    """
    if settings.token_signing_key:
        try:
            private = serialization.load_pem_private_key(settings.token_signing_key.encode(), password=None)
        except (ValueError, TypeError):
            raise ConfigError("PUSHQ_TOKEN_SIGNING_KEY is not an unencrypted PEM private key") from None
        if isinstance(private, rsa.RSAPrivateKey) and private.key_size < 2048:
            raise ConfigError("PUSHQ_TOKEN_SIGNING_KEY: RSA keys must have at least 2048 bits")
        algorithm = next((a for a in settings.jwt_algorithms
                          if not is_symmetric(a) and key_fits_algorithm(private, a)), None)
        if algorithm is None:
            raise ConfigError(
                f"PUSHQ_TOKEN_SIGNING_KEY fits none of JWT_ALGORITHMS {list(settings.jwt_algorithms)} "
                "(RSA: RS*/PS*, EC: ES256/ES384/ES512 by curve, Ed25519/Ed448: EdDSA)"
            )
        public = private.public_key()
        return SigningKey(private, algorithm, jwk_thumbprint(public), public)
    symmetric = next((a for a in settings.jwt_algorithms if is_symmetric(a)), None)
    if symmetric is not None and settings.jwt_secret:
        return SigningKey(settings.jwt_secret, symmetric, None, None)
    return None


@dataclass(frozen=True)
class ServiceTokenRule:
    """The claim that makes a token a service token (``PUSHQ_SERVICE_TOKEN_CLAIM`` = ``name=value``).

    The claim matches when it equals ``value`` or, for a list claim (``roles``,
    ``groups``), contains it. Examples: pushq's default ``token_use=service``
    (what pushq itself mints), Auth0's ``gty=client-credentials``.
    """

    claim: str
    value: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceTokenRule:
        claim, _, value = settings.service_token_claim.partition("=")
        if not claim.strip() or not value.strip():
            raise ConfigError("PUSHQ_SERVICE_TOKEN_CLAIM must be name=value")
        return cls(claim.strip(), value.strip())

    def matches(self, claims: dict[str, Any]) -> bool:
        found = claims.get(self.claim)
        return found == self.value or (isinstance(found, list) and self.value in found)

    def as_claims(self) -> dict[str, str]:
        """What a token pushq mints as a service token carries."""
        return {self.claim: self.value}


# -- issuing -------------------------------------------------------------------


class TokenIssuer:
    """Signs the service JWTs ``POST /oauth/token`` hands out (see :func:`load_signing_key`)."""

    def __init__(self, settings: Settings) -> None:
        if settings.token_lifetime_seconds < 1:
            raise ConfigError("PUSHQ_TOKEN_LIFETIME_SECONDS must be at least 1")
        self.settings = settings
        self.signing = load_signing_key(settings)
        self.service_rule = ServiceTokenRule.from_settings(settings)

    @property
    def enabled(self) -> bool:
        return self.signing is not None

    @property
    def lifetime_seconds(self) -> int:
        return self.settings.token_lifetime_seconds

    def issue(self, *, client_id: str, app_id: uuid.UUID, scopes: list[str] | tuple[str, ...]) -> str:
        if self.signing is None:
            raise ConfigError("no key to sign tokens with (PUSHQ_TOKEN_SIGNING_KEY or JWT_SECRET)")
        now = int(time.time())
        claims = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": client_id,
            "client_id": client_id,
            "app_id": str(app_id),
            "scope": " ".join(scopes),
            "iat": now,
            "exp": now + self.settings.token_lifetime_seconds,
            "jti": uuid.uuid4().hex,
            **self.service_rule.as_claims(),
        }
        headers = {"kid": self.signing.kid} if self.signing.kid else None
        return jwt.encode(claims, self.signing.key, algorithm=self.signing.algorithm, headers=headers)


def mint_token(
    settings: Settings,
    *,
    subject: str,
    app_id: uuid.UUID | str | None = None,
    scopes: list[str] | tuple[str, ...] = (),
    lifetime_seconds: int = 3600,
    private_key: str | None = None,
    algorithm: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Sign a token the API accepts (development and tests; production uses its IdP or POST /oauth/token).

    With ``app_id`` it is a service token: it also carries the service-token claim
    (PUSHQ_SERVICE_TOKEN_CLAIM). Without, a user token (``sub`` = the user id).
    """
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": subject,
        "iat": now,
        "exp": now + lifetime_seconds,
    }
    if app_id is not None:
        claims["app_id"] = str(app_id)
        claims["scope"] = " ".join(scopes)
        claims.update(ServiceTokenRule.from_settings(settings).as_claims())
    claims.update(extra or {})
    algorithm = algorithm or settings.jwt_algorithms[0]
    key = private_key if private_key is not None else settings.jwt_secret
    if key is None:
        raise ConfigError("minting needs JWT_SECRET or a private key")
    return jwt.encode(claims, key, algorithm=algorithm)
