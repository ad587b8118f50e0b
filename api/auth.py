"""Bearer-token authentication with PyJWT.

Two kinds of caller:

* a **service** (machine-to-machine) token, issued by a client-credentials
  grant: it carries ``app_id`` (the app it acts for) and ``scope``
  (space-separated, e.g. ``push:send``); ``sub`` is the client id;
* a **user** token: ``sub`` is the user's id (a UUID), no ``app_id``.

Both must be signed with an allowed algorithm and carry valid ``exp``, ``iss``
and ``aud``. Keys come from settings: a shared secret (HS*), a PEM public key,
or a JWKS URL (keys chosen by ``kid``, cached by PyJWKClient).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from shared.config import ConfigError, Settings

SEND_SCOPE = "push:send"


class AuthError(Exception):
    """Raised for any token problem; the API answers 401 Invalid token."""


@dataclass(frozen=True)
class Principal:
    kind: Literal["user", "service"]
    subject: str
    app_id: uuid.UUID | None
    user_id: uuid.UUID | None
    scopes: frozenset[str]

    @property
    def is_service(self) -> bool:
        return self.kind == "service"


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.algorithms = list(settings.jwt_algorithms)
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=300) if settings.jwt_jwks_url else None
        if any(a.startswith("HS") for a in self.algorithms) and not settings.jwt_secret:
            raise ConfigError("JWT_SECRET is required for HS* algorithms")
        if settings.jwt_secret and len(settings.jwt_secret.encode()) < 32:
            raise ConfigError("JWT_SECRET must be at least 32 bytes (RFC 7518 section 3.2)")

    def _key(self, token: str) -> Any:
        if self._jwks is not None:
            try:
                return self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError as exc:
                raise AuthError(f"no signing key: {exc}") from None
        if self.settings.jwt_public_key:
            return self.settings.jwt_public_key
        return self.settings.jwt_secret

    def verify(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError("missing bearer token")
        token = authorization[len("Bearer ") :].strip()
        try:
            claims = jwt.decode(
                token,
                key=self._key(token),
                algorithms=self.algorithms,
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                leeway=self.settings.jwt_leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(str(exc)) from None
        return principal_from_claims(claims)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    scopes = frozenset(str(claims.get("scope", "")).split())
    subject = str(claims["sub"])
    if "app_id" in claims:
        try:
            app_id = uuid.UUID(str(claims["app_id"]))
        except ValueError:
            raise AuthError("app_id is not a UUID") from None
        return Principal("service", subject, app_id, None, scopes)
    try:
        user_id = uuid.UUID(subject)
    except ValueError:
        raise AuthError("user token sub is not a UUID") from None
    return Principal("user", subject, None, user_id, scopes)


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
    """Sign a token the API accepts (development and tests; production uses its IdP)."""
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
    claims.update(extra or {})
    algorithm = algorithm or settings.jwt_algorithms[0]
    key = private_key if private_key is not None else settings.jwt_secret
    if key is None:
        raise ConfigError("minting needs JWT_SECRET or a private key")
    return jwt.encode(claims, key, algorithm=algorithm)
