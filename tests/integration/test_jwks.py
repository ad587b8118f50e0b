"""JWKS verification against a real JWKS server on a loopback socket.

Keys are chosen by ``kid``, cached, refetched once when an unknown ``kid``
shows up (rotation) but never more than once per interval (garbage kids), and a
JWKS server that is down or broken means 401 for the caller, never 500.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from api.app import create_app
from api.auth import JWKS_REFETCH_INTERVAL_SECONDS, AuthError, TokenVerifier
from shared.config import Settings
from shared.db import session_scope
from shared.services import clients
from shared.token_signing import public_jwk


class JwksServer:
    """Serves ``{"keys": [...]}`` at /jwks; counts requests; can answer 500 or garbage."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.status = 200
        self.body: bytes | None = None  # overrides the JSON document when set
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                payload = server.body if server.body is not None else json.dumps({"keys": server.keys}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/jwks"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Key:
    def __init__(self, private: Any, kid: str, alg: str) -> None:
        self.private, self.kid, self.alg = private, kid, alg
        public = private.public_key()
        to_jwk = RSAAlgorithm.to_jwk if alg.startswith(("RS", "PS")) else ECAlgorithm.to_jwk
        self.jwk = {**to_jwk(public, as_dict=True), "kid": kid, "use": "sig", "alg": alg}
        self.public_pem = public.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def rsa1() -> Key:
    return Key(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-1", "RS256")


@pytest.fixture(scope="module")
def rsa2() -> Key:
    return Key(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-2", "RS256")


@pytest.fixture(scope="module")
def ec1() -> Key:
    return Key(ec.generate_private_key(ec.SECP256R1()), "ec-1", "ES256")


@pytest.fixture
def jwks(rsa1: Key, ec1: Key) -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys = [rsa1.jwk, ec1.jwk]
    yield server
    server.stop()


@pytest.fixture
def jwks_settings(settings: Settings, jwks: JwksServer) -> Settings:
    return settings.replace(jwt_secret=None, jwt_algorithms=("RS256", "ES256"), jwt_jwks_url=jwks.url)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(jwks_settings: Settings, clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(jwks_settings, clock=clock)


def claims(settings: Settings, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {"iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": "svc", "iat": now, "exp": now + 600,
              "app_id": str(uuid.uuid4()), "scope": "push:send", "token_use": "service"}
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def sign(key: Key, settings: Settings, kid: str | None = "same", **changes: Any) -> str:
    headers = {"kid": key.kid if kid == "same" else kid} if kid is not None else {}
    return "Bearer " + jwt.encode(claims(settings, **changes), key.private, algorithm=key.alg, headers=headers)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], body: dict[str, Any], hmac_key: bytes | None) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(body).encode())}"
    signature = "" if hmac_key is None else b64url(hmac.new(hmac_key, signing_input.encode(), "sha256").digest())
    return f"Bearer {signing_input}.{signature}"


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks"


# -- keys by kid ------------------------------------------------------------------


def test_tokens_verify_with_the_key_their_kid_names(verifier, jwks_settings, jwks, rsa1, ec1):
    app_id = uuid.uuid4()
    principal = verifier.verify(sign(rsa1, jwks_settings, app_id=str(app_id)))
    assert principal.is_service and principal.app_id == app_id
    assert verifier.verify(sign(ec1, jwks_settings)).is_service
    user_id = uuid.uuid4()
    assert verifier.verify(sign(rsa1, jwks_settings, sub=str(user_id), app_id=None, scope=None, token_use=None)).user_id == user_id
    assert jwks.requests == 1  # one fetch, then the cache


def test_unknown_kid_is_refused(verifier, jwks_settings, rsa1, rsa2):
    with pytest.raises(AuthError):
        verifier.verify(sign(rsa2, jwks_settings))  # rsa-2 is not published
    with pytest.raises(AuthError):
        verifier.verify(sign(rsa1, jwks_settings, kid="rsa-2"))


def test_token_without_kid_is_refused(verifier, jwks_settings, rsa1):
    with pytest.raises(AuthError):
        verifier.verify(sign(rsa1, jwks_settings, kid=None))


def test_kid_of_another_key_is_refused(verifier, jwks_settings, jwks, rsa1, ec1, rsa2):
    with pytest.raises(AuthError):
        verifier.verify(sign(rsa2, jwks_settings, kid="rsa-1"))  # right kid, wrong private key
    with pytest.raises(AuthError):
        verifier.verify(sign(ec1, jwks_settings, kid="rsa-1"))  # an ES256 token naming an RSA key


# -- rotation and the refetch budget ------------------------------------------------


def test_rotation_new_key_after_one_refetch_removed_key_stops(verifier, jwks_settings, jwks, clock, rsa1, rsa2, ec1):
    assert verifier.verify(sign(rsa1, jwks_settings)).is_service
    assert jwks.requests == 1
    jwks.keys = [rsa2.jwk, ec1.jwk]  # the identity provider rotates: adds rsa-2, drops rsa-1
    clock.advance(1)
    assert verifier.verify(sign(rsa2, jwks_settings)).is_service
    assert jwks.requests == 2  # exactly one refetch
    with pytest.raises(AuthError):
        verifier.verify(sign(rsa1, jwks_settings))
    assert verifier.verify(sign(rsa2, jwks_settings)).is_service
    assert jwks.requests == 2


def test_removed_key_stops_at_the_next_scheduled_refresh(verifier, jwks_settings, jwks, clock, rsa1, ec1):
    assert verifier.verify(sign(rsa1, jwks_settings)).is_service
    jwks.keys = [ec1.jwk]
    clock.advance(301)  # past the cache lifespan (300 s)
    with pytest.raises(AuthError):
        verifier.verify(sign(rsa1, jwks_settings))
    assert jwks.requests == 2


def test_garbage_kids_cost_at_most_one_refetch_per_interval(verifier, jwks_settings, jwks, clock, rsa1, rsa2):
    assert verifier.verify(sign(rsa1, jwks_settings)).is_service
    for _ in range(20):
        with pytest.raises(AuthError):
            verifier.verify(sign(rsa2, jwks_settings, kid=secrets.token_hex(8)))
        clock.advance(0.5)
    assert jwks.requests == 2  # the initial fetch and one refetch for 20 unknown kids
    clock.advance(JWKS_REFETCH_INTERVAL_SECONDS)
    for _ in range(20):
        with pytest.raises(AuthError):
            verifier.verify(sign(rsa2, jwks_settings, kid=secrets.token_hex(8)))
    assert jwks.requests == 3  # the next interval allows one more
    assert verifier.verify(sign(rsa1, jwks_settings)).is_service  # known keys never wait


def test_garbage_kids_over_the_real_clock_with_the_app(settings, database, jwks, rsa1, rsa2):
    """The default verifier (real clock) through the API: 20 random kids, one refetch."""
    app = create_app(settings.replace(jwt_secret=None, jwt_algorithms=("RS256", "ES256"), jwt_jwks_url=jwks.url))
    http = app.test_client()
    for _ in range(20):
        response = http.get(f"/push/notifications/{uuid.uuid4()}",
                            headers={"Authorization": sign(rsa2, app.extensions["pushq"].settings, kid=secrets.token_hex(8))})
        assert response.status_code == 401
        assert response.get_json() == {"error": "invalid_token", "message": "Invalid token"}
    assert jwks.requests == 2  # first use, then one refetch for the first unknown kid


# -- the JWKS server failing ----------------------------------------------------------


def test_jwks_server_down_is_401_and_logged_without_the_token(settings, database, rsa1, caplog):
    url = closed_port_url()
    app = create_app(settings.replace(jwt_secret=None, jwt_algorithms=("RS256",), jwt_jwks_url=url))
    token = sign(rsa1, app.extensions["pushq"].settings)
    with caplog.at_level(logging.INFO):
        response = app.test_client().post("/push/send", json={"user_id": str(uuid.uuid4()), "title": "t", "body": "b"},
                                          headers={"Authorization": token})
    assert response.status_code == 401
    assert response.get_json() == {"error": "invalid_token", "message": "Invalid token"}
    assert url in caplog.text and "JWKS" in caplog.text
    assert token.split()[1] not in caplog.text
    assert token.split()[1].split(".")[2] not in caplog.text


@pytest.mark.parametrize("status, body", [(500, b"oops"), (200, b"not json"), (200, b"[1, 2]"), (200, b'{"keys": 3}')])
def test_broken_jwks_answers_are_401(jwks_settings, jwks, clock, rsa1, status, body):
    jwks.status, jwks.body = status, body
    verifier = TokenVerifier(jwks_settings, clock=clock)
    with pytest.raises(AuthError):
        verifier.verify(sign(rsa1, jwks_settings))


def test_failed_fetch_is_not_retried_at_once(jwks_settings, jwks, clock, rsa1):
    jwks.status, jwks.body = 503, b"down"
    verifier = TokenVerifier(jwks_settings, clock=clock)
    for _ in range(10):
        with pytest.raises(AuthError):
            verifier.verify(sign(rsa1, jwks_settings))
    assert jwks.requests == 1
    jwks.status, jwks.body = 200, None  # back up
    clock.advance(5)
    assert verifier.verify(sign(rsa1, jwks_settings)).is_service
    assert jwks.requests == 2


def test_last_good_keys_bridge_a_short_outage_only(jwks_settings, jwks, clock, rsa1):
    verifier = TokenVerifier(jwks_settings, clock=clock)
    assert verifier.verify(sign(rsa1, jwks_settings)).is_service
    jwks.status, jwks.body = 503, b"down"
    clock.advance(301)  # the key set is due for refresh, which fails: the last good set still verifies
    assert verifier.verify(sign(rsa1, jwks_settings)).is_service
    clock.advance(300)  # beyond the grace period: nothing verifies until a fetch succeeds
    with pytest.raises(AuthError):
        verifier.verify(sign(rsa1, jwks_settings))


# -- algorithm attacks and claims -----------------------------------------------------


def test_alg_none_is_refused_before_any_key_lookup(jwks_settings, jwks, clock, rsa1):
    verifier = TokenVerifier(jwks_settings, clock=clock)
    for alg in ("none", "None", "NONE"):
        with pytest.raises(AuthError):
            verifier.verify(hand_signed({"alg": alg, "kid": "rsa-1"}, claims(jwks_settings), None))
    assert jwks.requests == 0


def test_hs256_signed_with_the_public_key_is_refused(jwks_settings, jwks, clock, rsa1):
    verifier = TokenVerifier(jwks_settings, clock=clock)
    for secret in (rsa1.public_pem.encode(), json.dumps(rsa1.jwk).encode(), rsa1.jwk["n"].encode()):
        with pytest.raises(AuthError):
            verifier.verify(hand_signed({"alg": "HS256", "kid": "rsa-1"}, claims(jwks_settings), secret))
    assert jwks.requests == 0


def test_an_allowed_alg_the_jwk_does_not_declare_is_refused(settings, jwks, clock, rsa1):
    """rsa-1 is published for RS256: a PS256 token naming it does not verify even with PS256 allowed."""
    ps_settings = settings.replace(jwt_secret=None, jwt_algorithms=("RS256", "PS256"), jwt_jwks_url=jwks.url)
    verifier = TokenVerifier(ps_settings, clock=clock)
    token = jwt.encode(claims(ps_settings), rsa1.private, algorithm="PS256", headers={"kid": "rsa-1"})
    with pytest.raises(AuthError):
        verifier.verify(f"Bearer {token}")


def test_symmetric_keys_in_a_jwks_are_ignored(jwks_settings, jwks, clock):
    secret = secrets.token_bytes(32)
    jwks.keys = [{"kty": "oct", "kid": "hmac", "k": b64url(secret)}]
    verifier = TokenVerifier(jwks_settings, clock=clock)
    with pytest.raises(AuthError):
        verifier.verify(hand_signed({"alg": "HS256", "kid": "hmac"}, claims(jwks_settings), secret))


@pytest.mark.parametrize("changes", [
    {"exp": int(time.time()) - 120},
    {"exp": None},
    {"iss": "https://evil.example"},
    {"iss": None},
    {"aud": "someone-else"},
    {"aud": None},
    {"sub": None},
    {"nbf": int(time.time()) + 3600},
])
def test_bad_claims_are_refused(verifier, jwks_settings, rsa1, changes):
    with pytest.raises(AuthError):
        verifier.verify(sign(rsa1, jwks_settings, **changes))


def test_small_rsa_keys_are_refused(jwks_settings, jwks, clock):
    weak = Key(rsa.generate_private_key(public_exponent=65537, key_size=1024), "weak", "RS256")
    jwks.keys = [weak.jwk]
    with pytest.warns(InsecureKeyLengthWarning):  # PyJWT signs with it, grudgingly
        token = sign(weak, jwks_settings)
    with pytest.raises(AuthError):
        TokenVerifier(jwks_settings, clock=clock).verify(token)


# -- through the app, and pushq's own tokens in a JWKS deployment -----------------------


def test_one_request_through_the_app(settings, database, jwks, tenant, rsa1, rsa2):
    app = create_app(settings.replace(jwt_secret=None, jwt_algorithms=("RS256", "ES256"), jwt_jwks_url=jwks.url))
    app_settings = app.extensions["pushq"].settings
    user_id = uuid.uuid4()
    tenant.enroll(user_id)
    http = app.test_client()
    body = {"user_id": str(user_id), "title": "t", "body": "b"}
    ok = http.post("/push/send", json=body, headers={"Authorization": sign(rsa1, app_settings, app_id=str(tenant.id))})
    assert ok.status_code == 200, ok.get_data(as_text=True)
    refused = http.post("/push/send", json=body, headers={"Authorization": sign(rsa2, app_settings, app_id=str(tenant.id))})
    assert refused.status_code == 401
    # A JWKS deployment without a signing key has no built-in token endpoint.
    disabled = http.post("/oauth/token", data={"grant_type": "client_credentials"})
    assert disabled.status_code == 404 and disabled.get_json()["error"] == "token_endpoint_disabled"


def test_own_tokens_verify_in_a_jwks_deployment(settings, database, jwks, tenant, session_factory):
    """With PUSHQ_TOKEN_SIGNING_KEY, /oauth/token's tokens name pushq's key by thumbprint; no JWKS fetch needed."""
    signing = ec.generate_private_key(ec.SECP256R1())
    pem = signing.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    app = create_app(settings.replace(jwt_secret=None, jwt_algorithms=("RS256", "ES256"), jwt_jwks_url=jwks.url,
                                      token_signing_key=pem))
    with session_scope(session_factory) as session:
        client_id, secret = clients.create_client(session, tenant.id, ["push:send"])
    user_id = uuid.uuid4()
    tenant.enroll(user_id)
    http = app.test_client()
    issued = http.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                             "client_secret": secret})
    assert issued.status_code == 200, issued.get_data(as_text=True)
    token = issued.get_json()["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == public_jwk(signing.public_key(), "ES256")["kid"]
    sent = http.post("/push/send", json={"user_id": str(user_id), "title": "t", "body": "b"},
                     headers={"Authorization": f"Bearer {token}"})
    assert sent.status_code == 200, sent.get_data(as_text=True)
    assert jwks.requests == 0
