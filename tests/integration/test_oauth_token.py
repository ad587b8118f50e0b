"""``POST /oauth/token``: the client-credentials grant, client secrets at rest, and the CLI that manages clients."""

from __future__ import annotations

import base64
import json
import uuid
from urllib.parse import quote_plus

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, text

from api.app import create_app
from api.auth import TokenVerifier
from cli import main as cli
from shared.config import ConfigError
from shared.db import session_scope
from shared.errors import AppNotFound
from shared.models import Notification, OAuthClient
from shared.services import clients
from tests.support.harness import TEST_ENV

TOKEN_URL = "/oauth/token"
GRANT = {"grant_type": "client_credentials"}


def new_client(session_factory, app_id, scopes=("push:send",)) -> tuple[str, str]:
    with session_scope(session_factory) as session:
        return clients.create_client(session, app_id, scopes)


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def assert_oauth_error(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "message"} and body["error"] == error and body["message"]
    assert response.headers["Cache-Control"] == "no-store"
    return body


def assert_invalid_client(response) -> None:
    body = assert_oauth_error(response, 401, "invalid_client")
    assert body == {"error": "invalid_client", "message": "Client authentication failed"}
    assert response.headers["WWW-Authenticate"].startswith("Basic ")


@pytest.fixture
def credentials(tenant, session_factory) -> tuple[str, str]:
    return new_client(session_factory, tenant.id)


# -- success ---------------------------------------------------------------------


def test_basic_auth_gets_a_service_token(client, settings, tenant, credentials):
    client_id, secret = credentials
    response = client.post(TOKEN_URL, data=GRANT, headers=basic(client_id, secret))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = response.get_json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == settings.token_lifetime_seconds
    assert body["scope"] == "push:send"
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "HS256"
    claims = jwt.decode(body["access_token"], settings.jwt_secret, algorithms=["HS256"],
                        audience=settings.jwt_audience, issuer=settings.jwt_issuer)
    assert claims["sub"] == client_id
    assert claims["app_id"] == str(tenant.id)
    assert claims["scope"] == "push:send"
    assert claims["exp"] - claims["iat"] == settings.token_lifetime_seconds
    assert claims["jti"]
    principal = TokenVerifier(settings).verify("Bearer " + body["access_token"])
    assert principal.is_service and principal.app_id == tenant.id and principal.subject == client_id


def test_form_fields_authenticate_too(client, credentials):
    client_id, secret = credentials
    response = client.post(TOKEN_URL, data={**GRANT, "client_id": client_id, "client_secret": secret})
    assert response.status_code == 200
    assert response.get_json()["token_type"] == "Bearer"


def test_every_token_is_unique(client, settings, credentials):
    tokens = [client.post(TOKEN_URL, data=GRANT, headers=basic(*credentials)).get_json()["access_token"]
              for _ in range(2)]
    jtis = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens}
    assert len(jtis) == 2


def test_issued_token_sends_for_the_clients_app(api, tenant, other_tenant, session_factory, credentials):
    """End to end over a real socket: token, then POST /push/send as the client's app."""
    user_id = uuid.uuid4()
    tenant.enroll(user_id)
    response = api.post(TOKEN_URL, data=GRANT, headers=basic(*credentials))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    bearer = {"Authorization": f"Bearer {response.json()['access_token']}"}
    sent = api.post("/push/send", json={"user_id": str(user_id), "title": "t", "body": "b"}, headers=bearer)
    assert sent.status_code == 200, sent.text
    notification_id = uuid.UUID(sent.json()["notification_id"])
    with session_factory() as session:
        assert session.get(Notification, notification_id).app_id == tenant.id
    assert api.get(f"/push/notifications/{notification_id}", headers=bearer).status_code == 200
    # The other app's users are not this client's to send to.
    other_user = uuid.uuid4()
    other_tenant.enroll(other_user)
    refused = api.post("/push/send", json={"user_id": str(other_user), "title": "t", "body": "b"}, headers=bearer)
    assert refused.status_code == 400 and refused.json()["error"] == "user_not_enrolled"


# -- client authentication failures -----------------------------------------------


def test_wrong_secret_is_invalid_client(client, credentials):
    client_id, secret = credentials
    assert_invalid_client(client.post(TOKEN_URL, data=GRANT, headers=basic(client_id, secret + "x")))
    assert_invalid_client(client.post(TOKEN_URL, data={**GRANT, "client_id": client_id, "client_secret": "nope"}))


def test_unknown_client_is_invalid_client(client, credentials):
    _, secret = credentials
    assert_invalid_client(client.post(TOKEN_URL, data=GRANT, headers=basic("pqc_unknown", secret)))
    assert_invalid_client(client.post(TOKEN_URL, data=GRANT, headers=basic("x" * 200, secret)))
    # Found by fuzzing: a NUL byte is an error for PostgreSQL, so such ids never reach it.
    assert_invalid_client(client.post(TOKEN_URL, data={**GRANT, "client_id": "pqc_\x00", "client_secret": secret}))
    assert_invalid_client(client.post(TOKEN_URL, data=GRANT, headers=basic("pqc_\x00é", secret)))


def test_revoked_client_is_invalid_client(client, session_factory, credentials):
    client_id, secret = credentials
    assert client.post(TOKEN_URL, data=GRANT, headers=basic(client_id, secret)).status_code == 200
    with session_scope(session_factory) as session:
        clients.revoke_client(session, client_id)
    assert_invalid_client(client.post(TOKEN_URL, data=GRANT, headers=basic(client_id, secret)))


def test_missing_or_partial_credentials_are_invalid_client(client, credentials):
    client_id, _ = credentials
    assert_invalid_client(client.post(TOKEN_URL, data=GRANT))
    assert_invalid_client(client.post(TOKEN_URL, data={**GRANT, "client_id": client_id}))
    assert_invalid_client(client.post(TOKEN_URL, data=GRANT, headers={"Authorization": "Basic !!!not-base64"}))
    no_colon = base64.b64encode(client_id.encode()).decode()
    assert_invalid_client(client.post(TOKEN_URL, data=GRANT, headers={"Authorization": f"Basic {no_colon}"}))


def test_a_bearer_token_is_not_client_authentication(client, tenant):
    assert_invalid_client(client.post(TOKEN_URL, data=GRANT, headers=tenant.service_headers()))


def test_two_authentication_methods_at_once_are_refused(client, credentials):
    client_id, secret = credentials
    response = client.post(TOKEN_URL, data={**GRANT, "client_id": client_id, "client_secret": secret},
                           headers=basic(client_id, secret))
    assert_oauth_error(response, 400, "invalid_request")


def test_another_apps_client_gets_a_token_for_its_own_app_only(client, tenant, other_tenant, session_factory):
    client_id, secret = new_client(session_factory, other_tenant.id)
    token = client.post(TOKEN_URL, data=GRANT, headers=basic(client_id, secret)).get_json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["app_id"] == str(other_tenant.id)


# -- request errors --------------------------------------------------------------


def test_unsupported_grant_type(client, credentials):
    for grant_type in ("password", "authorization_code", "refresh_token", "CLIENT_CREDENTIALS"):
        response = client.post(TOKEN_URL, data={"grant_type": grant_type}, headers=basic(*credentials))
        assert_oauth_error(response, 400, "unsupported_grant_type")


def test_missing_grant_type_is_invalid_request(client, credentials):
    assert_oauth_error(client.post(TOKEN_URL, data={}, headers=basic(*credentials)), 400, "invalid_request")


def test_json_body_is_invalid_request(client, credentials):
    """OAuth's token endpoint takes form encoding, the one exception to pushq's JSON-only rule."""
    response = client.post(TOKEN_URL, json=GRANT, headers=basic(*credentials))
    body = assert_oauth_error(response, 400, "invalid_request")
    assert "application/x-www-form-urlencoded" in body["message"]
    assert_oauth_error(client.post(TOKEN_URL, headers=basic(*credentials)), 400, "invalid_request")


def test_repeated_parameter_is_invalid_request(client, credentials):
    response = client.post(TOKEN_URL, data="grant_type=client_credentials&grant_type=client_credentials",
                           content_type="application/x-www-form-urlencoded", headers=basic(*credentials))
    assert_oauth_error(response, 400, "invalid_request")


def test_secret_in_the_query_string_is_refused(client, credentials):
    client_id, secret = credentials
    response = client.post(f"{TOKEN_URL}?client_secret={secret}", data={**GRANT, "client_id": client_id})
    assert_oauth_error(response, 400, "invalid_request")


def test_only_post(client):
    assert client.get(TOKEN_URL).status_code == 405


# -- scopes ----------------------------------------------------------------------


@pytest.fixture
def wide_credentials(tenant, session_factory) -> tuple[str, str]:
    return new_client(session_factory, tenant.id, ["push:send", "push:read"])


def _scope_of(response) -> tuple[str, str]:
    body = response.get_json()
    return body["scope"], jwt.decode(body["access_token"], options={"verify_signature": False})["scope"]


def test_scope_defaults_to_all_of_the_clients_scopes(client, wide_credentials):
    response = client.post(TOKEN_URL, data=GRANT, headers=basic(*wide_credentials))
    assert _scope_of(response) == ("push:send push:read", "push:send push:read")


def test_scope_can_be_narrowed(client, wide_credentials):
    response = client.post(TOKEN_URL, data={**GRANT, "scope": "push:read"}, headers=basic(*wide_credentials))
    assert response.status_code == 200
    assert _scope_of(response) == ("push:read", "push:read")


def test_a_narrowed_token_without_push_send_cannot_send(client, tenant, wide_credentials):
    user_id = uuid.uuid4()
    tenant.enroll(user_id)
    token = client.post(TOKEN_URL, data={**GRANT, "scope": "push:read"},
                        headers=basic(*wide_credentials)).get_json()["access_token"]
    response = client.post("/push/send", json={"user_id": str(user_id), "title": "t", "body": "b"},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.get_json()["error"] == "missing_scope"


@pytest.mark.parametrize("scope", ["admin", "push:send admin", "push:sendx", 'push:send "quoted"'])
def test_scope_beyond_the_clients_is_invalid_scope(client, credentials, scope):
    response = client.post(TOKEN_URL, data={**GRANT, "scope": scope}, headers=basic(*credentials))
    assert_oauth_error(response, 400, "invalid_scope")


# -- disabled, and signing with a private key -------------------------------------


def _ec_pems() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def test_without_a_signing_key_the_endpoint_is_disabled(settings, database, tenant, session_factory):
    _, public = _ec_pems()
    app = create_app(settings.replace(jwt_secret=None, jwt_algorithms=("ES256",), jwt_public_key=public))
    client_id, secret = new_client(session_factory, tenant.id)
    response = app.test_client().post(TOKEN_URL, data=GRANT, headers=basic(client_id, secret))
    assert response.status_code == 404
    body = response.get_json()
    assert body["error"] == "token_endpoint_disabled" and "disabled" in body["message"]


def test_signing_key_signs_with_the_first_fitting_algorithm(settings, database, tenant, session_factory):
    private, public = _ec_pems()
    app = create_app(settings.replace(jwt_secret=None, jwt_algorithms=("RS256", "ES256"), jwt_public_key=public,
                                      token_signing_key=private, token_lifetime_seconds=600))
    http = app.test_client()
    user_id = uuid.uuid4()
    tenant.enroll(user_id)
    client_id, secret = new_client(session_factory, tenant.id)
    response = http.post(TOKEN_URL, data=GRANT, headers=basic(client_id, secret))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["expires_in"] == 600
    token = response.get_json()["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"]
    sent = http.post("/push/send", json={"user_id": str(user_id), "title": "t", "body": "b"},
                     headers={"Authorization": f"Bearer {token}"})
    assert sent.status_code == 200, sent.get_data(as_text=True)


def test_a_signing_key_that_fits_no_allowed_algorithm_is_a_configuration_error(settings):
    private, public = _ec_pems()
    with pytest.raises(ConfigError):
        TokenVerifier(settings.replace(jwt_secret=None, jwt_algorithms=("RS256",), jwt_public_key=public,
                                       token_signing_key=private))
    with pytest.raises(ConfigError):
        TokenVerifier(settings.replace(token_signing_key="not a key"))


# -- secrets at rest ----------------------------------------------------------------


def test_the_database_holds_no_plaintext_secret(engine, tenant, session_factory):
    issued = [new_client(session_factory, tenant.id) for _ in range(3)]
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM oauth_clients")).mappings().all()
    assert len(rows) == 3
    dump = json.dumps([{k: str(v) for k, v in row.items()} for row in rows])
    for _, secret in issued:
        assert secret not in dump
        assert secret.encode().hex() not in dump
    hashes = [row["secret_hash"] for row in rows]
    assert all(h.startswith("scrypt$16384$8$1$") and len(h.split("$")) == 6 for h in hashes)
    assert len({h.split("$")[4] for h in hashes}) == 3  # a salt per secret


def test_hashes_are_salted_and_verified_in_constant_time():
    first, second = clients.hash_secret("s3cret"), clients.hash_secret("s3cret")
    assert first != second
    assert clients.verify_secret("s3cret", first) and clients.verify_secret("s3cret", second)
    assert not clients.verify_secret("s3cret!", first)
    assert not clients.verify_secret("s3cret", "plain$text")
    assert not clients.verify_secret("s3cret", first.replace("$16384$", "$1073741824$"))  # absurd cost refused


def test_create_client_validates(session_factory, tenant, engine):
    with session_scope(session_factory) as session:
        with pytest.raises(ValueError):
            clients.create_client(session, tenant.id, [])
        with pytest.raises(ValueError):
            clients.create_client(session, tenant.id, ["push send"])
        with pytest.raises(AppNotFound):
            clients.create_client(session, uuid.uuid4(), ["push:send"])
        client_id, secret = clients.create_client(session, tenant.id, ["push:send", "push:send"])
        assert len(secret) >= 43 and client_id.startswith("pqc_")
        assert session.get(OAuthClient, client_id).scopes == "push:send"
        assert clients.authenticate(session, client_id, secret).app_id == tenant.id
        with pytest.raises(clients.InvalidClient):
            clients.authenticate(session, client_id, "")


# -- CLI ---------------------------------------------------------------------------


def test_cli_creates_and_revokes_clients(client, tenant, session_factory):
    runner = CliRunner()
    created = runner.invoke(cli, ["create-client", str(tenant.id), "--scope", "push:send"], env=TEST_ENV)
    assert created.exit_code == 0, created.output
    printed = json.loads(created.stdout.strip().splitlines()[0])
    assert set(printed) == {"client_id", "client_secret", "scope"}
    assert client.post(TOKEN_URL, data=GRANT, headers=basic(printed["client_id"], printed["client_secret"])).status_code == 200
    with session_factory() as session:
        stored = session.scalars(select(OAuthClient)).one()
        assert stored.client_id == printed["client_id"] and printed["client_secret"] not in stored.secret_hash
    revoked = runner.invoke(cli, ["revoke-client", printed["client_id"]], env=TEST_ENV)
    assert revoked.exit_code == 0, revoked.output
    assert_invalid_client(client.post(TOKEN_URL, data=GRANT, headers=basic(printed["client_id"], printed["client_secret"])))
    unknown = runner.invoke(cli, ["revoke-client", "pqc_nope"], env=TEST_ENV)
    assert unknown.exit_code != 0 and "Client not found" in unknown.output
    no_app = runner.invoke(cli, ["create-client", str(uuid.uuid4())], env=TEST_ENV)
    assert no_app.exit_code != 0 and "App not found" in no_app.output
