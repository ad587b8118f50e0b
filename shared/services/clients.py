"""OAuth clients of an app, for the client-credentials grant at ``POST /oauth/token``.

A client's secret is random (``secrets.token_urlsafe(32)``: 256 bits), shown
once when the client is created and stored only as a salted scrypt hash
``scrypt$N$r$p$salt$hash`` (salt and hash base64url): a leaked database does
not leak working credentials, and the parameters travel with each hash so they
can be raised later without breaking stored ones. Checking a secret compares
in constant time; only a live client's secret is hashed (ids are not secrets:
see :func:`_check_credentials`), and at most PUSHQ_TOKEN_HASH_CONCURRENCY
hashes run at once per process.

Guessing is throttled: with a :class:`shared.guards.ClientAuthFailureLimiter`,
failed authentications per client id and per source address are counted in
Redis and refused *before* the scrypt hash runs. A revoked client gets no new
tokens, and the tokens it holds stop verifying within a minute
(:func:`revoked_client_ids`, read by ``api.auth.RevokedClients``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.errors import ServiceError
from shared.guards import ClientAuthFailureLimiter
from shared.models import OAuthClient
from shared.services.apps import get_app

log = logging.getLogger(__name__)

# scrypt cost: N=2^14, r=8, p=1 (16 MiB, tens of milliseconds): the interactive-login
# parameters of the scrypt paper, ample for 256-bit random secrets.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
CLIENT_ID_PREFIX = "pqc_"
MAX_SECRET_CHARS = 512
MAX_SCOPES_CHARS = 255  # the column's size
# How long an authentication waits for a hashing slot before answering 503 (a burst queues briefly).
HASH_WAIT_SECONDS = 0.5

# RFC 6749 appendix A.1: client_id = *VSCHAR (%x20-7E); the column holds 64. Anything else is no client of
# ours and never reaches the database (a NUL byte, say, is an error there rather than a miss).
_CLIENT_ID = re.compile(r"[\x20-\x7E]{1,64}")
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")


class InvalidClient(ServiceError):
    status, code, message = 401, "invalid_client", "Client authentication failed"


class ClientNotFound(ServiceError):
    status, code, message = 404, "client_not_found", "Client not found"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=128 * r * (n + p + 2) + 1024 * 1024)


def hash_secret(secret: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$N$r$p$salt$hash`` with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(_scrypt(secret, salt, n, r, p, HASH_BYTES))}"


def verify_secret(secret: str, encoded: str) -> bool:
    """Whether ``secret`` matches ``encoded`` (constant-time comparison); False for a malformed hash."""
    try:
        scheme, n_text, r_text, p_text, salt_text, hash_text = encoded.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt, expected = _unb64(salt_text), _unb64(hash_text)
    except ValueError:
        log.error("malformed client secret hash")
        return False
    # Bounds keep a tampered row from turning one request into gigabytes or minutes of work.
    if scheme != "scrypt" or not (2**10 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16) \
            or not 16 <= len(expected) <= 64:
        log.error("client secret hash with unsupported parameters")
        return False
    return hmac.compare_digest(_scrypt(secret, salt, n, r, p, len(expected)), expected)


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    """Scope tokens in first-seen order without repeats; ValueError for an empty list or a malformed token."""
    result: list[str] = []
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope):
            raise ValueError(f"invalid scope {scope!r}: scope tokens are printable ASCII without spaces, '\"' or '\\'")
        if scope not in result:
            result.append(scope)
    if not result:
        raise ValueError("a client needs at least one scope")
    if len(" ".join(result)) > MAX_SCOPES_CHARS:
        raise ValueError(f"scopes are limited to {MAX_SCOPES_CHARS} characters in all")
    return result


def create_client(session: Session, app_id: uuid.UUID, scopes: Iterable[str]) -> tuple[str, str]:
    """Create a client for ``app_id``; returns ``(client_id, secret)``. The secret is not stored and cannot be shown again."""
    get_app(session, app_id)
    granted = normalize_scopes(scopes)
    client_id = CLIENT_ID_PREFIX + secrets.token_urlsafe(18)
    secret = secrets.token_urlsafe(32)
    session.add(OAuthClient(client_id=client_id, app_id=app_id, secret_hash=hash_secret(secret),
                            scopes=" ".join(granted)))
    session.flush()
    return client_id, secret


class HashingBusy(ServiceError):
    """Every hashing slot of this process stayed busy: answered at once rather than queued without bound."""

    status, code, message = 503, "temporarily_unavailable", "Too many client authentications in progress, try again shortly"


def authenticate(
    session: Session,
    client_id: str,
    secret: str,
    *,
    limiter: ClientAuthFailureLimiter | None = None,
    address: str | None = None,
    hash_slots: threading.Semaphore | None = None,
) -> OAuthClient:
    """The active client with this id and secret; :class:`InvalidClient` otherwise (unknown, wrong secret, revoked).

    With ``limiter``, the attempt is counted against ``client_id`` and the source
    ``address`` first (:class:`shared.guards.TooManyFailedAuthentications` when
    either has too many recent failures: no hash is computed then) and forgiven
    when it succeeds. With ``hash_slots`` (PUSHQ_TOKEN_HASH_CONCURRENCY per
    process), at most that many scrypt runs go on at once; an attempt that finds
    no slot within :data:`HASH_WAIT_SECONDS` gets :class:`HashingBusy` (503) and
    does not count as a failure.
    """
    attempt = limiter.reserve(client_id, address, utcnow()) if limiter is not None else None
    try:
        client = _check_credentials(session, client_id, secret, hash_slots)
    except HashingBusy:
        if attempt is not None:
            limiter.forgive(attempt)  # type: ignore[union-attr]
        raise
    if attempt is not None:
        limiter.forgive(attempt)  # type: ignore[union-attr]
    return client


def _check_credentials(
    session: Session, client_id: str, secret: str, hash_slots: threading.Semaphore | None
) -> OAuthClient:
    """Only a live client's secret is hashed: an unknown, malformed or revoked id is refused without scrypt.

    That answers an unknown id faster than a known one, so timing tells whether
    an id exists. Ids are not secrets (144 random bits; every token a client gets
    names it in ``sub`` and ``client_id``, and logs name it); the secret is what
    authenticates, and guessing one needs a live id, whose failures the limiter
    counts. Hashing a dummy for unknown ids would let anyone make the API spend
    scrypt time for free, which is what the per-address limit alone did not stop.
    """
    if not isinstance(secret, str) or len(secret) > MAX_SECRET_CHARS:
        raise InvalidClient()
    client = session.get(OAuthClient, client_id) if isinstance(client_id, str) and _CLIENT_ID.fullmatch(client_id) \
        else None
    if client is None or client.revoked_at is not None:
        raise InvalidClient()
    if hash_slots is not None and not hash_slots.acquire(timeout=HASH_WAIT_SECONDS):
        raise HashingBusy(headers={"Retry-After": "1"})
    try:
        matches = verify_secret(secret, client.secret_hash)
    finally:
        if hash_slots is not None:
            hash_slots.release()
    if not matches:
        raise InvalidClient()
    return client


def revoke_client(session: Session, client_id: str) -> OAuthClient:
    """Stop the client from getting new tokens; the API refuses the tokens it holds within a minute."""
    client = session.get(OAuthClient, client_id) if _CLIENT_ID.fullmatch(client_id) else None
    if client is None:
        raise ClientNotFound()
    if client.revoked_at is None:
        client.revoked_at = utcnow()
        session.flush()
    return client


def revoked_client_ids(session: Session) -> frozenset[str]:
    """Every revoked client's id: tokens carrying one as ``client_id`` are refused (``api.auth.RevokedClients``)."""
    return frozenset(session.scalars(select(OAuthClient.client_id).where(OAuthClient.revoked_at.is_not(None))))


def client_scopes(client: OAuthClient) -> list[str]:
    return client.scopes.split()
