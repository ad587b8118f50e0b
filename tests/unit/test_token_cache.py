"""Verified tokens are reused until their exp; revocation is still checked on every use."""

from __future__ import annotations

import uuid

import pytest

from api.auth import AuthError, RevokedClients, TokenVerifier
from api.token_cache import VerifiedToken, VerifiedTokens
from shared.config import Settings
from shared.token_signing import mint_token

SETTINGS = Settings.from_env({"JWT_SECRET": "unit-secret-not-for-production-0123456789", "JWT_ALGORITHMS": "HS256",
                              "JWT_ISSUER": "pushq-unit", "JWT_AUDIENCE": "pushq"})


def service_token(**extra: object) -> str:
    return mint_token(SETTINGS, subject="svc", app_id=uuid.uuid4(), scopes=["push:send"], extra=dict(extra))


def test_a_verified_token_is_answered_from_the_cache_with_the_same_principal():
    verifier = TokenVerifier(SETTINGS)
    token = service_token()
    first = verifier.verify(f"Bearer {token}")
    assert len(verifier.verified) == 1
    assert verifier.verify(f"Bearer {token}") is first


def test_a_refused_token_is_never_cached():
    verifier = TokenVerifier(SETTINGS)
    forged = service_token()[:-4] + "AAAA"
    for _ in range(2):
        with pytest.raises(AuthError):
            verifier.verify(f"Bearer {forged}")
    assert len(verifier.verified) == 0


def test_a_cached_token_stops_at_its_exp():
    clock = [1000.0]
    cache = VerifiedTokens(clock=lambda: clock[0])
    cache.put("t", VerifiedToken(principal="p", client_id=None, valid_until=1010.0))
    assert cache.get("t") is not None
    clock[0] = 1010.0
    assert cache.get("t") is None
    assert len(cache) == 0


def test_the_cache_is_bounded_least_recently_used_first():
    cache = VerifiedTokens(capacity=2, clock=lambda: 0.0)
    for name in ("a", "b"):
        cache.put(name, VerifiedToken(principal=name, client_id=None, valid_until=1.0))
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("c", VerifiedToken(principal="c", client_id=None, valid_until=1.0))
    assert (cache.get("a") is not None, cache.get("b"), cache.get("c") is not None) == (True, None, True)


def test_a_revoked_client_is_refused_even_when_its_token_is_cached():
    revoked: set[str] = set()
    verifier = TokenVerifier(SETTINGS, revoked_clients=RevokedClients(lambda: revoked, refresh_seconds=0.0))
    token = service_token(client_id="pqc_bench", token_use="service")
    verifier.verify(f"Bearer {token}")
    assert len(verifier.verified) == 1
    revoked.add("pqc_bench")
    with pytest.raises(AuthError, match="revoked"):
        verifier.verify(f"Bearer {token}")
