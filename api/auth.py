"""Bearer-token authentication with PyJWT (the signing side is :mod:`shared.token_signing`).

Two kinds of caller:

* a **service** (machine-to-machine) token, issued by a client-credentials
  grant: it carries the service-token claim (``PUSHQ_SERVICE_TOKEN_CLAIM``,
  default ``token_use: service``), ``app_id`` (the app it acts for) and
  ``scope`` (space-separated, e.g. ``push:send``); ``sub`` is the client id;
* a **user** token: every other token; ``sub`` is the user's id (a UUID). An
  ``app_id`` or ``scope`` in it gives no service rights: identity providers
  put such claims into user tokens too, so only the claim an operator chose
  (and configured the IdP to set on client-credentials tokens only) marks a
  service token (OWASP API5).

A service token with a ``client_id`` claim (every token ``POST /oauth/token``
issues) stops verifying within :data:`REVOKED_CLIENTS_REFRESH_SECONDS` (+ the
time of one reload) of ``pushq revoke-client``: see :class:`RevokedClients`.

Both must be signed with an allowed algorithm and carry valid ``exp``, ``iss``
and ``aud``. Keys come from settings: a shared secret (HS*), a PEM public key,
or a JWKS URL. How a token is checked, in order:

1. the header's ``alg`` must be in ``JWT_ALGORITHMS`` (checked before any key
   lookup, so ``none`` or an HS* token never even reaches the keys);
2. the key: the JWKS key named by the token's ``kid`` (see :class:`JwksKeys`),
   the PEM public key, or the secret; plus, when pushq signs tokens itself
   (``PUSHQ_TOKEN_SIGNING_KEY``), its own public key under its RFC 7638
   thumbprint as ``kid``. The key's type must fit ``alg`` (an RSA key never
   verifies an ES256 token; a JWK that declares ``alg`` only verifies that one);
3. signature, ``exp`` (required), ``nbf``, ``iat``, ``iss``, ``aud`` and ``sub``
   (required), with ``JWT_LEEWAY_SECONDS`` of clock skew; RSA keys under 2048
   bits are refused.

Nothing here logs a token: failures become :class:`AuthError` with a reason
the API logs at INFO, and JWKS fetch failures are logged with the URL only.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import get_default_algorithms

from api.token_cache import VerifiedToken, VerifiedTokens
from shared.config import ConfigError, Settings
from shared.token_signing import (
    ServiceTokenRule,
    is_symmetric,
    key_fits_algorithm,
    load_signing_key,
)

log = logging.getLogger(__name__)

# Clock skew beyond a few minutes is a broken clock, not skew.
MAX_LEEWAY_SECONDS = 300
# A bearer token larger than this is not one pushq or any IdP issues.
MAX_TOKEN_CHARS = 16_384
MAX_KID_CHARS = 256

# JWKS: how long a fetched key set is used before it is fetched again; the least
# time between two refetches caused by an unknown ``kid`` (whatever the kid: a
# stream of garbage kids costs at most one request per interval); how long to wait
# after a failed fetch before trying the network again; how long a key set may
# still be used when refreshing it fails (the identity provider being down should
# not take pushq down with it); the HTTP timeout.
JWKS_LIFESPAN_SECONDS = 300.0
JWKS_REFETCH_INTERVAL_SECONDS = 30.0
JWKS_RETRY_AFTER_FAILURE_SECONDS = 5.0
JWKS_STALE_GRACE_SECONDS = 300.0
JWKS_TIMEOUT_SECONDS = 5.0

# How stale the per-process set of revoked OAuth clients may get: a revoked client's tokens
# stop working within this (plus one reload), far inside the promised 60 s. After a failed
# reload (database unreachable) the last set is kept and the reload retried this soon.
REVOKED_CLIENTS_REFRESH_SECONDS = 30.0
REVOKED_CLIENTS_RETRY_SECONDS = 5.0

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


# -- JWKS ----------------------------------------------------------------------


@dataclass(frozen=True)
class JwksKey:
    key: Any  # a cryptography public key
    algorithm: str | None  # the JWK's ``alg`` when it declares one


def index_jwks(document: Any) -> dict[str, JwksKey]:
    """The usable signing keys of a JWKS document by ``kid``.

    Skipped: keys without a ``kid``, encryption keys (``use`` other than ``sig``),
    symmetric keys (``kty: oct``: a JWKS is public, a secret in it is no secret)
    and keys PyJWT cannot load. The first key wins when a ``kid`` repeats.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: no 'keys' list")
    keys: dict[str, JwksKey] = {}
    for raw in document["keys"]:
        if not isinstance(raw, dict):
            continue
        kid = raw.get("kid")
        if not isinstance(kid, str) or not kid or kid in keys:
            continue
        if raw.get("use", "sig") != "sig" or raw.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        try:
            jwk = jwt.PyJWK(raw)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring JWKS key %r: %s", kid[:MAX_KID_CHARS], exc)
            continue
        declared = raw.get("alg")
        keys[kid] = JwksKey(jwk.key, declared if isinstance(declared, str) else None)
    return keys


class JwksKeys:
    """The keys of a JWKS URL, by ``kid``, cached, with rate-limited refetches.

    * The key set is fetched on first use and again once it is ``lifespan``
      seconds old.
    * A ``kid`` not in the set (a key the identity provider just rotated in)
      triggers one immediate refetch, but at most one such refetch per
      ``refetch_interval`` for all kids together: tokens with random kids cannot
      make pushq hammer the JWKS URL. A key the provider removed stops verifying
      as soon as a refetch no longer lists it.
    * A failed fetch is logged (URL and reason, never a token) and not retried
      for ``retry_after_failure`` seconds; meanwhile the last good key set keeps
      verifying for up to ``stale_grace`` seconds past its lifespan, after which
      every token is refused until a fetch succeeds.

    PyJWKClient does the HTTP (http/https only, no redirects, a timeout); the
    caching lives here so the refetch policy is explicit and testable (``clock``).
    """

    def __init__(
        self,
        url: str,
        *,
        lifespan: float = JWKS_LIFESPAN_SECONDS,
        refetch_interval: float = JWKS_REFETCH_INTERVAL_SECONDS,
        retry_after_failure: float = JWKS_RETRY_AFTER_FAILURE_SECONDS,
        stale_grace: float = JWKS_STALE_GRACE_SECONDS,
        timeout: float = JWKS_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout,
                                           headers={"User-Agent": "pushq"})
        except jwt.PyJWKClientError as exc:
            raise ConfigError(f"JWT_JWKS_URL: {exc}") from None
        self.url = url
        self._lifespan, self._refetch_interval = lifespan, refetch_interval
        self._retry_after_failure, self._stale_grace = retry_after_failure, stale_grace
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, JwksKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._failed_at: float | None = None  # last failed fetch, cleared by a success
        self._refetched_at: float | None = None  # last refetch caused by an unknown kid

    def get(self, kid: str) -> JwksKey:
        with self._lock:
            now = self._clock()
            fetched = False
            if self._fetched_at is None or now - self._fetched_at >= self._lifespan:
                fetched = self._fetch(now)
            key = self._usable_keys(now).get(kid)
            if key is None and not fetched and self._may_refetch(now):
                self._refetched_at = now
                self._fetch(now)
                key = self._usable_keys(now).get(kid)
        if key is None:
            raise AuthError("no JWKS signing key for the token's kid")
        return key

    def _may_refetch(self, now: float) -> bool:
        return self._refetched_at is None or now - self._refetched_at >= self._refetch_interval

    def _usable_keys(self, now: float) -> dict[str, JwksKey]:
        if self._fetched_at is None or now - self._fetched_at >= self._lifespan + self._stale_grace:
            return {}
        return self._keys

    def _fetch(self, now: float) -> bool:
        """Fetch the key set now unless a fetch failed moments ago; True when it succeeded."""
        if self._failed_at is not None and now - self._failed_at < self._retry_after_failure:
            return False
        try:
            keys = index_jwks(self._client.fetch_data())
        except Exception as exc:
            self._failed_at = now
            log.warning("fetching JWKS from %s failed: %s: %s", self.url, type(exc).__name__, exc)
            return False
        self._keys, self._fetched_at, self._failed_at = keys, now, None
        return True


# -- service tokens and revoked clients -------------------------------------------


class RevokedClients:
    """The ids of revoked OAuth clients, cached per process and reloaded at most every ``refresh_seconds``.

    ``load`` reads them (the database, :func:`shared.services.clients.revoked_client_ids`).
    One reload per interval for the whole process, whatever the traffic; when a
    reload fails the previous set stays in use (logged) and the reload is retried
    after ``retry_seconds``: a database outage fails the requests that need it
    anyway, it should not turn every token into a 401.
    """

    def __init__(
        self,
        load: Callable[[], Iterable[str]],
        *,
        refresh_seconds: float = REVOKED_CLIENTS_REFRESH_SECONDS,
        retry_seconds: float = REVOKED_CLIENTS_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load, self._refresh, self._retry, self._clock = load, refresh_seconds, retry_seconds, clock
        self._lock = threading.Lock()
        self._revoked: frozenset[str] = frozenset()
        self._next_load_at: float | None = None

    def __contains__(self, client_id: object) -> bool:
        with self._lock:
            now = self._clock()
            if self._next_load_at is None or now >= self._next_load_at:
                try:
                    self._revoked = frozenset(self._load())
                    self._next_load_at = now + self._refresh
                except Exception as exc:
                    log.warning("reloading revoked OAuth clients failed: %s", type(exc).__name__)
                    self._next_load_at = now + self._retry
            return client_id in self._revoked


# -- verification --------------------------------------------------------------


class TokenVerifier:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        revoked_clients: RevokedClients | None = None,
        **jwks_options: Any,
    ) -> None:
        settings.validate()  # never 'none', never HS* next to a public key or a JWKS URL
        self.settings = settings
        self.algorithms = tuple(settings.jwt_algorithms)
        known = get_default_algorithms()
        unknown = [a for a in self.algorithms if a not in known]
        if unknown:
            raise ConfigError(f"JWT_ALGORITHMS: unknown algorithm(s) {unknown}")
        if any(is_symmetric(a) for a in self.algorithms) and not settings.jwt_secret:
            raise ConfigError("JWT_SECRET is required for HS* algorithms")
        if settings.jwt_secret and len(settings.jwt_secret.encode()) < 32:
            raise ConfigError("JWT_SECRET must be at least 32 bytes (RFC 7518 section 3.2)")
        if not 0 <= settings.jwt_leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ConfigError(f"JWT_LEEWAY_SECONDS must be between 0 and {MAX_LEEWAY_SECONDS}")
        self._secret = settings.jwt_secret if any(is_symmetric(a) for a in self.algorithms) else None
        self._public_key = _load_public_key(settings) if settings.jwt_public_key else None
        self._jwks = JwksKeys(settings.jwt_jwks_url, clock=clock, **jwks_options) if settings.jwt_jwks_url else None
        signing = load_signing_key(settings)
        # pushq's own tokens (POST /oauth/token with PUSHQ_TOKEN_SIGNING_KEY) name their key by thumbprint.
        self._own = signing if signing is not None and signing.kid is not None else None
        self.service_rule = ServiceTokenRule.from_settings(settings)
        self.revoked_clients = revoked_clients
        self.verified = VerifiedTokens()  # a token is verified once per process, then reused until its exp

    def verify(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError("missing bearer token")
        token = authorization[len("Bearer ") :].strip()
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise AuthError("empty or oversized token")
        cached = self.verified.get(token)
        if cached is not None:
            return self._not_revoked(cached.principal, cached.client_id)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise AuthError(f"algorithm {str(algorithm)[:32]!r} is not allowed")
        key = self._key(algorithm, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                leeway=self.settings.jwt_leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"], "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(str(exc)) from None
        principal = principal_from_claims(claims, self.service_rule)
        client_id = claims.get("client_id")
        self._not_revoked(principal, client_id)
        exp = claims["exp"]  # required, and PyJWT checked it is a number
        self.verified.put(token, VerifiedToken(principal, client_id, float(exp) + self.settings.jwt_leeway_seconds))
        return principal

    def _not_revoked(self, principal: Principal, client_id: Any) -> Principal:
        if principal.is_service and client_id is not None and self.revoked_clients is not None \
                and client_id in self.revoked_clients:
            raise AuthError("the token's OAuth client is revoked")
        return principal

    def _key(self, algorithm: str, kid: Any) -> Any:
        if is_symmetric(algorithm):
            # Only reachable in an HS*-only deployment (Settings.validate), where the secret is the only key.
            return self._secret
        if kid is not None and not (isinstance(kid, str) and 0 < len(kid) <= MAX_KID_CHARS):
            raise AuthError("malformed kid")
        if self._own is not None and kid == self._own.kid:
            key, declared = self._own.public_key, self._own.algorithm
        elif self._jwks is not None:
            if kid is None:
                raise AuthError("token has no kid (needed to choose a JWKS key)")
            jwks_key = self._jwks.get(kid)
            key, declared = jwks_key.key, jwks_key.algorithm
        elif self._public_key is not None:
            key, declared = self._public_key, None
        else:
            raise AuthError("no key for this algorithm")
        if (declared is not None and declared != algorithm) or not key_fits_algorithm(key, algorithm):
            raise AuthError(f"the key does not fit algorithm {algorithm}")
        return key


def _load_public_key(settings: Settings) -> Any:
    try:
        key = serialization.load_pem_public_key(settings.jwt_public_key.encode())  # type: ignore[union-attr]
    except (ValueError, TypeError):
        raise ConfigError("JWT_PUBLIC_KEY is not a PEM public key") from None
    if not any(key_fits_algorithm(key, a) for a in settings.jwt_algorithms):
        raise ConfigError(f"JWT_PUBLIC_KEY fits none of JWT_ALGORITHMS {list(settings.jwt_algorithms)}")
    return key


def principal_from_claims(claims: dict[str, Any], rule: ServiceTokenRule) -> Principal:
    """A service principal when ``rule`` matches (then ``app_id`` is required), a user principal otherwise.

    A user token's ``app_id`` and ``scope`` are ignored: they grant nothing.
    """
    subject = str(claims["sub"])
    if rule.matches(claims):
        if "app_id" not in claims:
            raise AuthError("service token without app_id")
        try:
            app_id = uuid.UUID(str(claims["app_id"]))
        except ValueError:
            raise AuthError("app_id is not a UUID") from None
        return Principal("service", subject, app_id, None, frozenset(str(claims.get("scope", "")).split()))
    try:
        user_id = uuid.UUID(subject)
    except ValueError:
        raise AuthError("user token sub is not a UUID") from None
    return Principal("user", subject, None, user_id, frozenset())
