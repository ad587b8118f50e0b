"""Token verification: what is a valid token, and that every invalid one is a plain 401.

Tokens that fail are built the way an attacker or a misconfigured identity
provider would build them: by hand where a library would refuse to.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
import uuid
from typing import Any

import jwt
import pytest
from sqlalchemy import func, select

from api.auth import AuthError, TokenVerifier
from shared.config import ConfigError, Settings
from shared.models import Device, Notification
from shared.token_signing import mint_token
from tests.support.keys import rsa_key_pair

SECRET = "test-secret-not-for-production-0123456789"


# -- helpers -------------------------------------------------------------------


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def hand_signed(header: dict[str, Any], claims: dict[str, Any], key: bytes | None, digest: str = "sha256") -> str:
    """A JWS built without PyJWT's guard rails: HMAC with ``key``, or no signature at all."""
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    signature = "" if key is None else b64url(hmac.new(key, signing_input.encode(), digest).digest())
    return f"{signing_input}.{signature}"


def service_claims(settings: Settings, app_id: uuid.UUID, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": "svc",
        "iat": now,
        "exp": now + 3600,
        "app_id": str(app_id),
        "scope": "push:send",
        "token_use": "service",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_invalid_token(response) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.get_json() == {"error": "invalid_token", "message": "Invalid token"}


def notification_count(session_factory) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(Notification))


@pytest.fixture
def user(tenant) -> uuid.UUID:
    user_id = uuid.uuid4()
    tenant.enroll(user_id)
    return user_id


def send(client, user_id: uuid.UUID, headers: dict[str, str]):
    return client.post("/push/send", json={"user_id": str(user_id), "title": "t", "body": "b"}, headers=headers)


# -- service tokens through the API -------------------------------------------


def test_valid_service_token_is_accepted(client, tenant, user):
    assert send(client, user, tenant.service_headers()).status_code == 200


def test_hand_built_hs256_token_is_accepted(client, settings, tenant, user):
    """Positive control for the hand-built tokens below: correctly signed, it passes."""
    token = hand_signed({"alg": "HS256", "typ": "JWT"}, service_claims(settings, tenant.id), settings.jwt_secret.encode())
    assert send(client, user, bearer(token)).status_code == 200


def test_token_expired_within_leeway_is_accepted(client, tenant, user):
    """JWT_LEEWAY_SECONDS (30) absorbs clock skew: expired 10 s ago still passes."""
    assert send(client, user, tenant.service_headers(lifetime_seconds=-10)).status_code == 200


def _bad_tokens(settings: Settings, app_id: uuid.UUID) -> dict[str, str]:
    now = int(time.time())
    svc = {"subject": "svc", "app_id": app_id, "scopes": ["push:send"]}
    return {
        "expired beyond leeway": mint_token(settings, **svc, lifetime_seconds=-120),
        "wrong audience": mint_token(settings, **svc, extra={"aud": "someone-else"}),
        "wrong issuer": mint_token(settings, **svc, extra={"iss": "https://evil.example"}),
        "alg none": hand_signed({"alg": "none", "typ": "JWT"}, service_claims(settings, app_id), None),
        "alg None": hand_signed({"alg": "None", "typ": "JWT"}, service_claims(settings, app_id), None),
        "another secret": mint_token(settings, **svc, private_key="another-secret-of-at-least-32-bytes!"),
        "disallowed HS512 with the right secret": hand_signed(
            {"alg": "HS512", "typ": "JWT"}, service_claims(settings, app_id), SECRET.encode(), "sha512"
        ),
        "missing exp": jwt.encode(service_claims(settings, app_id, exp=None), SECRET, algorithm="HS256"),
        "missing iss": jwt.encode(service_claims(settings, app_id, iss=None), SECRET, algorithm="HS256"),
        "missing aud": jwt.encode(service_claims(settings, app_id, aud=None), SECRET, algorithm="HS256"),
        "missing sub": jwt.encode(service_claims(settings, app_id, sub=None), SECRET, algorithm="HS256"),
        "exp not a number": jwt.encode(service_claims(settings, app_id, exp="tomorrow"), SECRET, algorithm="HS256"),
        "not yet valid": mint_token(settings, **svc, extra={"nbf": now + 3600}),
        "app_id not a uuid": mint_token(settings, subject="svc", app_id="my-app", scopes=["push:send"]),
        "signature stripped": mint_token(settings, **svc).rpartition(".")[0] + ".",
    }


BAD_TOKEN_CASES = [
    "expired beyond leeway", "wrong audience", "wrong issuer", "alg none", "alg None", "another secret",
    "disallowed HS512 with the right secret", "missing exp", "missing iss", "missing aud", "missing sub",
    "exp not a number", "not yet valid", "app_id not a uuid", "signature stripped",
]


@pytest.mark.parametrize("case", BAD_TOKEN_CASES)
def test_invalid_service_tokens_are_401(client, settings, tenant, user, session_factory, case):
    assert settings.jwt_secret == SECRET
    tokens = _bad_tokens(settings, tenant.id)
    assert set(tokens) == set(BAD_TOKEN_CASES)
    token = tokens[case]
    assert_invalid_token(send(client, user, bearer(token)))
    assert notification_count(session_factory) == 0


def test_alg_none_token_is_401_on_every_kind_of_endpoint(client, settings, tenant, user):
    none_service = hand_signed({"alg": "none", "typ": "JWT"}, service_claims(settings, tenant.id), None)
    now = int(time.time())
    none_user = hand_signed(
        {"alg": "none", "typ": "JWT"},
        {"iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": str(user), "exp": now + 3600},
        None,
    )
    assert_invalid_token(client.get(f"/push/notifications/{uuid.uuid4()}", headers=bearer(none_service)))
    assert_invalid_token(client.delete(f"/push/devices/{uuid.uuid4()}", headers=bearer(none_service)))
    assert_invalid_token(client.delete(f"/push/devices/{uuid.uuid4()}", headers=bearer(none_user)))
    register = {"app_id": str(tenant.id), "platform": "ios", "push_token": secrets.token_hex(32)}
    assert_invalid_token(client.post("/push/devices/register", json=register, headers=bearer(none_user)))


# -- user tokens ---------------------------------------------------------------


def register_ios(client, tenant, headers):
    return client.post(
        "/push/devices/register",
        json={"app_id": str(tenant.id), "platform": "ios", "push_token": secrets.token_hex(32)},
        headers=headers,
    )


def test_valid_user_token_can_register(client, tenant, user):
    assert register_ios(client, tenant, tenant.user_headers(user)).status_code == 201


@pytest.mark.parametrize("subject", ["alice", "12345", "", "00000000-0000-0000-0000-00000000000z"])
def test_user_token_with_non_uuid_sub_is_401(client, tenant, subject, session_factory):
    token = mint_token(tenant.settings, subject=subject)
    assert_invalid_token(register_ios(client, tenant, bearer(token)))
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Device)) == 0


def test_expired_user_token_is_401(client, tenant):
    assert_invalid_token(register_ios(client, tenant, tenant.user_headers(uuid.uuid4(), lifetime_seconds=-120)))


# -- a service token acts only for its own app --------------------------------


def test_service_of_app_b_cannot_read_app_a_notification(client, tenant, other_tenant, user):
    sent = send(client, user, tenant.service_headers())
    notification_id = sent.get_json()["notification_id"]
    response = client.get(f"/push/notifications/{notification_id}", headers=other_tenant.service_headers())
    assert response.status_code == 404
    assert response.get_json() == {"error": "notification_not_found", "message": "Notification not found"}
    # ...while app A itself can.
    assert client.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers()).status_code == 200


def test_service_of_app_b_cannot_delete_app_a_device(client, tenant, other_tenant, user, session_factory):
    device_id = register_ios(client, tenant, tenant.user_headers(user)).get_json()["device_id"]
    response = client.delete(f"/push/devices/{device_id}", headers=other_tenant.service_headers())
    assert response.status_code == 404
    assert response.get_json() == {"error": "device_not_found", "message": "Device not found"}
    with session_factory() as session:
        assert session.get(Device, uuid.UUID(device_id)).disabled_at is None


def test_service_of_app_b_cannot_send_to_app_a_users(client, tenant, other_tenant, user, session_factory):
    response = send(client, user, other_tenant.service_headers())
    assert response.status_code == 400
    assert response.get_json()["error"] == "user_not_enrolled"
    assert notification_count(session_factory) == 0


def test_service_token_for_an_app_that_does_not_exist_sees_nothing(client, tenant, user, settings):
    ghost = mint_token(settings, subject="svc", app_id=uuid.uuid4(), scopes=["push:send"])
    notification_id = send(client, user, tenant.service_headers()).get_json()["notification_id"]
    response = client.get(f"/push/notifications/{notification_id}", headers=bearer(ghost))
    assert response.status_code == 404
    assert response.get_json()["error"] == "notification_not_found"


# -- TokenVerifier directly ------------------------------------------------------


def test_verifier_builds_principals(settings):
    verifier = TokenVerifier(settings)
    app_id, user_id = uuid.uuid4(), uuid.uuid4()
    service = verifier.verify("Bearer " + mint_token(settings, subject="client-1", app_id=app_id, scopes=["push:send", "x"]))
    assert (service.kind, service.subject, service.app_id, service.user_id) == ("service", "client-1", app_id, None)
    assert service.scopes == frozenset({"push:send", "x"})
    user = verifier.verify("Bearer " + mint_token(settings, subject=str(user_id)))
    assert (user.kind, user.app_id, user.user_id) == ("user", None, user_id)


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Token abc", "Basic dXNlcjpwYXNz"])
def test_verifier_refuses_missing_or_non_bearer_headers(settings, authorization):
    with pytest.raises(AuthError):
        TokenVerifier(settings).verify(authorization)


# -- configuration that would be insecure is refused -----------------------------


@pytest.mark.parametrize("algorithms", ["none", "NONE", "HS256,none", "HS256 None"])
def test_settings_refuse_alg_none(algorithms):
    with pytest.raises(ConfigError):
        Settings.from_env({"JWT_SECRET": SECRET, "JWT_ALGORITHMS": algorithms})


def _rsa_key_pair() -> tuple[str, str]:
    pair = rsa_key_pair()
    return pair.private_pem, pair.public_pem


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    return _rsa_key_pair()


@pytest.mark.parametrize("algorithms", ["HS256", "HS256,RS256", "RS256 HS512"])
def test_settings_refuse_hs_next_to_a_public_key(rsa_keys, algorithms):
    """With HS* allowed, the public key would double as an HMAC secret anyone can sign with."""
    _, public_pem = rsa_keys
    with pytest.raises(ConfigError):
        Settings.from_env({"JWT_SECRET": SECRET, "JWT_ALGORITHMS": algorithms, "JWT_PUBLIC_KEY": public_pem})


def test_settings_refuse_hs_next_to_a_jwks_url():
    with pytest.raises(ConfigError):
        Settings.from_env({"JWT_SECRET": SECRET, "JWT_ALGORITHMS": "HS256", "JWT_JWKS_URL": "https://idp.example/jwks"})


def test_settings_refuse_asymmetric_algorithms_without_a_key():
    with pytest.raises(ConfigError):
        Settings.from_env({"JWT_ALGORITHMS": "RS256"})


def test_verifier_refuses_a_short_secret():
    with pytest.raises(ConfigError):
        TokenVerifier(Settings.from_env({"JWT_SECRET": "x" * 31}))
    TokenVerifier(Settings.from_env({"JWT_SECRET": "x" * 32}))  # 32 bytes is enough


def test_verifier_counts_secret_length_in_bytes():
    """16 two-byte characters are 32 bytes: enough. 31 bytes of mixed text are not."""
    TokenVerifier(Settings.from_env({"JWT_SECRET": "é" * 16}))
    with pytest.raises(ConfigError):
        TokenVerifier(Settings.from_env({"JWT_SECRET": "é" * 15 + "x"}))


def test_verifier_refuses_hs_without_a_secret():
    with pytest.raises(ConfigError):
        TokenVerifier(Settings.from_env({"JWT_ALGORITHMS": "HS256"}))


# -- RS256 with a public key, and the key-confusion attack -----------------------


@pytest.fixture(scope="module")
def rsa_settings(rsa_keys) -> Settings:
    _, public_pem = rsa_keys
    return Settings.from_env(
        {"JWT_ALGORITHMS": "RS256", "JWT_PUBLIC_KEY": public_pem, "JWT_ISSUER": "idp", "JWT_AUDIENCE": "pushq"}
    )


def test_rs256_token_signed_with_the_private_key_is_accepted(rsa_keys, rsa_settings):
    private_pem, _ = rsa_keys
    assert rsa_settings.jwt_algorithms == ("RS256",)
    verifier = TokenVerifier(rsa_settings)
    app_id = uuid.uuid4()
    token = mint_token(rsa_settings, subject="svc", app_id=app_id, scopes=["push:send"], private_key=private_pem)
    principal = verifier.verify(f"Bearer {token}")
    assert principal.is_service and principal.app_id == app_id


def test_hs256_token_using_the_public_key_as_secret_is_refused(rsa_keys, rsa_settings):
    """The classic key confusion: the attacker knows the public PEM and HMACs with it."""
    _, public_pem = rsa_keys
    claims = service_claims(rsa_settings, uuid.uuid4())
    forged = hand_signed({"alg": "HS256", "typ": "JWT"}, claims, public_pem.encode())
    with pytest.raises(AuthError):
        TokenVerifier(rsa_settings).verify(f"Bearer {forged}")
    # Also with the key bytes as some libraries would normalise them (no trailing newline).
    forged = hand_signed({"alg": "HS256", "typ": "JWT"}, claims, public_pem.strip().encode())
    with pytest.raises(AuthError):
        TokenVerifier(rsa_settings).verify(f"Bearer {forged}")


def test_rs256_token_signed_by_another_key_is_refused(rsa_settings):
    other_private, _ = _rsa_key_pair()
    token = mint_token(rsa_settings, subject=str(uuid.uuid4()), private_key=other_private, algorithm="RS256")
    with pytest.raises(AuthError):
        TokenVerifier(rsa_settings).verify(f"Bearer {token}")


def test_alg_none_is_refused_with_a_public_key_too(rsa_settings):
    token = hand_signed({"alg": "none", "typ": "JWT"}, service_claims(rsa_settings, uuid.uuid4()), None)
    with pytest.raises(AuthError):
        TokenVerifier(rsa_settings).verify(f"Bearer {token}")


def test_rs256_token_with_wrong_issuer_is_refused(rsa_keys, rsa_settings):
    private_pem, _ = rsa_keys
    token = mint_token(rsa_settings, subject=str(uuid.uuid4()), private_key=private_pem, extra={"iss": "pushq"})
    with pytest.raises(AuthError):
        TokenVerifier(rsa_settings).verify(f"Bearer {token}")


def test_es256_token_against_an_rsa_public_key_is_refused(rsa_settings):
    """ES256 allowed, but the configured key is RSA: the key's type must fit the token's alg."""
    from cryptography.hazmat.primitives.asymmetric import ec

    settings = rsa_settings.replace(jwt_algorithms=("RS256", "ES256"))
    token = mint_token(settings, subject=str(uuid.uuid4()), algorithm="ES256",
                       private_key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(AuthError):
        TokenVerifier(settings).verify(f"Bearer {token}")


@pytest.mark.parametrize("header", [{"alg": "HS512"}, {"alg": "none"}, {"typ": "JWT"}, {"alg": ["HS256"]}])
def test_header_alg_outside_the_allowlist_is_refused(settings, header):
    token = hand_signed(header, service_claims(settings, uuid.uuid4()), SECRET.encode())
    with pytest.raises(AuthError, match="not allowed"):
        TokenVerifier(settings).verify(f"Bearer {token}")


def test_verifier_refuses_unknown_algorithms_and_wild_leeway(rsa_keys):
    _, public_pem = rsa_keys
    with pytest.raises(ConfigError):
        TokenVerifier(Settings.from_env({"JWT_ALGORITHMS": "RS265", "JWT_PUBLIC_KEY": public_pem}))
    with pytest.raises(ConfigError):
        TokenVerifier(Settings.from_env({"JWT_SECRET": SECRET, "JWT_LEEWAY_SECONDS": "3600"}))
    with pytest.raises(ConfigError):
        TokenVerifier(Settings.from_env({"JWT_SECRET": SECRET, "JWT_LEEWAY_SECONDS": "-1"}))


def test_verifier_refuses_a_public_key_no_allowed_algorithm_fits(rsa_keys):
    _, public_pem = rsa_keys
    with pytest.raises(ConfigError):
        TokenVerifier(Settings.from_env({"JWT_ALGORITHMS": "ES256", "JWT_PUBLIC_KEY": public_pem}))
    with pytest.raises(ConfigError):
        TokenVerifier(Settings.from_env({"JWT_ALGORITHMS": "RS256", "JWT_PUBLIC_KEY": "not a key"}))


def test_verifier_validates_settings_built_without_from_env():
    """Settings(...) skips validate(); the verifier runs it, so 'none' cannot sneak in."""
    with pytest.raises(ConfigError):
        TokenVerifier(Settings(jwt_secret=SECRET, jwt_algorithms=("HS256", "none")))
