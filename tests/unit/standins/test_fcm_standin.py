"""Tests of the FCM HTTP v1 stand-in, driven through the client path pushq uses:
google-auth service-account credentials (token from the stand-in's /token) and
httpx POSTing messages with the bearer token.

Self-contained: every fixture is defined here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from email.utils import formatdate
from pathlib import Path

import httpx
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from standins.fcm import FcmMessage, FcmStandin, main
from tests.support.helpers import wait_for

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GOOGLE_AUD = "https://oauth2.googleapis.com/token"
PROJECT = "pushq-test"
OTHER_PROJECT = "someone-else"
DEVICE = "dev-token-abc:APA91b" + "x" * 140  # roughly the shape of a real registration token
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
MAIN_DIR = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin():
    with FcmStandin() as s:
        yield s


@pytest.fixture(scope="module")
def sa_info(standin):
    return standin.new_service_account(PROJECT)


@pytest.fixture(scope="module")
def other_sa_info(standin):
    return standin.new_service_account(OTHER_PROJECT)


@pytest.fixture
def auth_session():
    with requests.Session() as session:
        session.trust_env = False  # never route 127.0.0.1 through a proxy
        yield session


@pytest.fixture
def http():
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        yield client


def credentials_for(info: dict) -> service_account.Credentials:
    return service_account.Credentials.from_service_account_info(info, scopes=[FCM_SCOPE])


def ensure_token(credentials: service_account.Credentials, session: requests.Session) -> str:
    """What pushq does: refresh only when google-auth says the token is not valid."""
    if not credentials.valid:
        credentials.refresh(Request(session=session))
    return credentials.token


def token_for(info: dict, session: requests.Session) -> str:
    return ensure_token(credentials_for(info), session)


@pytest.fixture
def bearer(standin, sa_info, auth_session):
    token = token_for(sa_info, auth_session)
    standin.reset()
    yield token
    standin.reset()


def send(http: httpx.Client, standin: FcmStandin, token: str, message: dict, *, project: str = PROJECT,
         **extra) -> httpx.Response:
    return http.post(
        standin.send_url(project),
        json={"message": message, **extra},
        headers={"Authorization": f"Bearer {token}"},
    )


def assert_google_error(resp: httpx.Response, code: int, status: str, error_code: str | None = None) -> dict:
    assert resp.status_code == code, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] == code
    assert err["status"] == status
    assert isinstance(err["message"], str) and err["message"]
    codes = [d.get("errorCode") for d in err.get("details", []) if d.get("@type") == FCM_ERROR_TYPE]
    if error_code is None:
        assert codes in ([], ["INVALID_ARGUMENT"])
    else:
        assert codes == [error_code]
    return err


def post_token(http: httpx.Client, standin: FcmStandin, assertion: str) -> httpx.Response:
    return http.post(
        standin.token_uri,
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
    )


def sign_assertion(info: dict, **overrides) -> str:
    now = int(time.time())
    claims = {"iss": info["client_email"], "aud": GOOGLE_AUD, "scope": FCM_SCOPE, "iat": now, "exp": now + 3600}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, info["private_key"], algorithm="RS256", headers={"kid": info["private_key_id"]})


# --------------------------------------------------------------------------
# the happy path through google-auth
# --------------------------------------------------------------------------


def test_service_account_looks_like_googles(standin, sa_info):
    assert sa_info["type"] == "service_account"
    assert sa_info["project_id"] == PROJECT
    assert sa_info["client_email"].endswith(f"@{PROJECT}.iam.gserviceaccount.com")
    assert sa_info["private_key"].startswith("-----BEGIN PRIVATE KEY-----\n")
    assert len(sa_info["private_key_id"]) == 40
    assert sa_info["client_id"].isdigit()
    assert sa_info["token_uri"] == standin.token_uri == standin.base_url + "/token"
    assert sa_info["auth_uri"] == "https://accounts.google.com/o/oauth2/auth"
    for key in ("auth_provider_x509_cert_url", "client_x509_cert_url", "universe_domain"):
        assert sa_info[key]


def test_google_auth_token_then_send(standin, sa_info, auth_session, http):
    standin.reset()
    credentials = credentials_for(sa_info)
    assert not credentials.valid

    token = ensure_token(credentials, auth_session)
    assert standin.token_requests == 1
    assert credentials.valid
    assert token.startswith("ya29.")
    # Using it again while valid does not go back to /token.
    assert ensure_token(credentials, auth_session) == token
    assert standin.token_requests == 1

    message = {
        "token": DEVICE,
        "data": {"kind": "chat", "id": "42"},
        "notification": {"title": "Hi", "body": "There"},
        "android": {"priority": "HIGH", "ttl": "3600s", "collapse_key": "chat"},
    }
    resp = send(http, standin, token, message)
    assert resp.status_code == 200, resp.text
    name = resp.json()["name"]
    assert name.startswith(f"projects/{PROJECT}/messages/")

    [recorded] = standin.messages(DEVICE)
    assert isinstance(recorded, FcmMessage)
    assert recorded.name == name
    assert recorded.project_id == PROJECT
    assert recorded.message == message
    assert recorded.received_at <= time.time()
    assert standin.attempts(DEVICE) == 1
    assert standin.messages("someone-else") == []
    standin.reset()


def test_short_lived_tokens_make_google_auth_refresh(standin, sa_info, auth_session):
    standin.reset()
    standin.access_token_lifetime = 60  # below google-auth's 225 s refresh threshold
    try:
        credentials = credentials_for(sa_info)
        ensure_token(credentials, auth_session)
        ensure_token(credentials, auth_session)
        assert standin.token_requests == 2
    finally:
        del standin.access_token_lifetime
        standin.reset()


def test_keep_alive_client_reuses_one_connection(standin, bearer, http):
    before = standin.connections_accepted
    names = set()
    for i in range(5):
        resp = send(http, standin, bearer, {"token": DEVICE, "data": {"n": str(i)}})
        assert resp.status_code == 200, resp.text
        names.add(resp.json()["name"])
    assert len(names) == 5
    assert standin.connections_accepted - before == 1
    assert [m.message["data"]["n"] for m in standin.messages(DEVICE)] == ["0", "1", "2", "3", "4"]


def test_keep_alive_survives_error_responses(standin, bearer, http):
    before = standin.connections_accepted
    assert send(http, standin, "nope", {"token": DEVICE}).status_code == 401
    assert send(http, standin, bearer, {"token": DEVICE, "data": {"a": 1}}).status_code == 400
    standin.set_behavior(DEVICE, "UNAVAILABLE", times=1)
    assert send(http, standin, bearer, {"token": DEVICE}).status_code == 503
    assert send(http, standin, bearer, {"token": DEVICE}).status_code == 200
    assert standin.connections_accepted - before == 1


# --------------------------------------------------------------------------
# the token endpoint
# --------------------------------------------------------------------------


def test_assertion_from_unknown_key_is_invalid_grant(standin, sa_info, auth_session, http):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = dict(sa_info)
    forged["private_key"] = stranger.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    before = standin.token_requests

    with pytest.raises(RefreshError) as excinfo:
        token_for(forged, auth_session)
    assert excinfo.value.args[1]["error"] == "invalid_grant"

    resp = post_token(http, standin, sign_assertion(forged))
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"
    assert resp.json()["error_description"]
    assert standin.token_requests == before


def test_unregistered_account_is_invalid_grant(standin, http):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    info = {
        "client_email": "nobody@nowhere.iam.gserviceaccount.com",
        "private_key_id": "ab" * 20,
        "private_key": stranger.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    }
    resp = post_token(http, standin, sign_assertion(info))
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"aud": "http://127.0.0.1/token"}, id="wrong-aud"),
        pytest.param({"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}, id="expired"),
        pytest.param({"exp": int(time.time()) + 7200}, id="lifetime-over-an-hour"),
        pytest.param({"iss": None}, id="no-iss"),
    ],
)
def test_bad_assertions_are_invalid_grant(standin, sa_info, http, overrides):
    resp = post_token(http, standin, sign_assertion(sa_info, **overrides))
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


def test_assertion_needs_messaging_scope(standin, sa_info, http):
    resp = post_token(http, standin, sign_assertion(sa_info, scope="https://www.googleapis.com/auth/devstorage.read_only"))
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_scope"


def test_token_endpoint_wants_jwt_bearer_grant(standin, http):
    resp = http.post(standin.token_uri, data={"grant_type": "client_credentials"})
    assert resp.status_code == 400
    assert resp.json()["error"] == "unsupported_grant_type"


def test_register_existing_service_account(sa_info, auth_session):
    with FcmStandin() as other:
        info = dict(sa_info, token_uri=other.token_uri)
        with pytest.raises(RefreshError):
            token_for(info, auth_session)
        other.register_service_account(info)
        assert token_for(info, auth_session)
        assert other.token_requests == 1


# --------------------------------------------------------------------------
# authentication and authorisation of sends
# --------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic dXNlcjpwYXNz"])
def test_bad_bearer_is_401(standin, bearer, http, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = http.post(standin.send_url(PROJECT), json={"message": {"token": DEVICE}}, headers=headers)
    assert_google_error(resp, 401, "UNAUTHENTICATED")
    assert "Bearer" in resp.headers["www-authenticate"]
    assert standin.messages(DEVICE) == []


def test_revoked_token_is_401(standin, sa_info, auth_session, http):
    token = token_for(sa_info, auth_session)
    standin.revoke_access_tokens()
    assert_google_error(send(http, standin, token, {"token": DEVICE}), 401, "UNAUTHENTICATED")


def test_token_of_another_project_is_403(standin, bearer, other_sa_info, auth_session, http):
    other_token = token_for(other_sa_info, auth_session)
    resp = send(http, standin, other_token, {"token": DEVICE}, project=PROJECT)
    err = assert_google_error(resp, 403, "PERMISSION_DENIED")
    assert not any(d.get("@type") == FCM_ERROR_TYPE for d in err.get("details", []))
    assert standin.messages(DEVICE) == []
    # The same token is fine for its own project.
    assert send(http, standin, other_token, {"token": DEVICE}, project=OTHER_PROJECT).status_code == 200


# --------------------------------------------------------------------------
# message shape
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"token": DEVICE, "data": {"count": 3}}, id="data-int-value"),
        pytest.param({"token": DEVICE, "data": ["a"]}, id="data-not-a-map"),
        pytest.param({"token": DEVICE, "android": {"ttl": "abc"}}, id="ttl-abc"),
        pytest.param({"token": DEVICE, "android": {"ttl": 3600}}, id="ttl-number"),
        pytest.param({"token": DEVICE, "android": {"ttl": "2419201s"}}, id="ttl-over-28-days"),
        pytest.param({"token": DEVICE, "android": {"ttl": "-1s"}}, id="ttl-negative"),
        pytest.param({"token": DEVICE, "android": {"priority": "URGENT"}}, id="bad-priority"),
        pytest.param({"token": DEVICE, "android": {"collapse_key": 5}}, id="collapse-key-int"),
        pytest.param({"token": DEVICE, "android": {"notification": {"color": "red"}}}, id="bad-color"),
        pytest.param({"token": DEVICE, "notification": {"title": 1}}, id="title-int"),
        pytest.param({"token": DEVICE, "android": {"notification": {"notification_priority": "HIGH"}}},
                     id="notification-priority-not-an-enum-name"),
        pytest.param({"token": DEVICE, "android": {"notification": {"visibility": "everyone"}}}, id="bad-visibility"),
        pytest.param({"token": DEVICE, "android": {"notification": {"thread_id": "x"}}}, id="android-unknown-field"),
        pytest.param({"token": DEVICE, "notification": {"subtitle": "x"}}, id="notification-unknown-field"),
        pytest.param({"token": DEVICE, "topic": "news"}, id="token-and-topic"),
        pytest.param({"data": {"a": "b"}}, id="no-target"),
        pytest.param({"token": ""}, id="empty-token"),
        pytest.param({"token": DEVICE, "priority": "high"}, id="unknown-top-level-field"),
        pytest.param({"token": DEVICE, "data": {"blob": "x" * 4096}}, id="over-4096-bytes"),
    ],
)
def test_bad_shapes_are_400(standin, bearer, http, message):
    resp = send(http, standin, bearer, message)
    assert_google_error(resp, 400, "INVALID_ARGUMENT")
    assert standin.messages(DEVICE) == []
    assert standin.all_messages() == []


def test_size_error_says_so(standin, bearer, http):
    resp = send(http, standin, bearer, {"token": DEVICE, "data": {"blob": "x" * 4096}})
    err = assert_google_error(resp, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert "size" in err["message"] or "too big" in err["message"]


def test_size_limit_is_on_the_serialized_message_without_its_target(standin, bearer, http):
    base = {"data": {"blob": ""}}
    room = 4096 - len(json.dumps(base, separators=(",", ":")).encode())
    for token in (DEVICE, DEVICE + "y" * 300):  # the token's length does not count
        assert send(http, standin, bearer, {"token": token, "data": {"blob": "x" * room}}).status_code == 200
        assert send(http, standin, bearer, {"token": token, "data": {"blob": "x" * (room + 1)}}).status_code == 400


@pytest.mark.parametrize("key", ["from", "message_type", "collapse_key", "google.c.a.e", "gcm.n.e"])
def test_reserved_data_keys_are_refused(standin, bearer, http, key):
    resp = send(http, standin, bearer, {"token": DEVICE, "data": {key: "1"}})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")
    assert f"Invalid data payload key: {key}" in resp.text


def test_unknown_request_field_and_bad_json_are_400(standin, bearer, http):
    resp = send(http, standin, bearer, {"token": DEVICE}, dry_run=True)
    assert_google_error(resp, 400, "INVALID_ARGUMENT")
    resp = http.post(standin.send_url(PROJECT), content=b"{not json", headers={"Authorization": f"Bearer {bearer}"})
    assert_google_error(resp, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    "android",
    [
        {"priority": "high", "ttl": "3.5s"},
        {"priority": "normal", "ttl": "0s"},
        {"priority": "NORMAL", "ttl": "2419200s", "collapse_key": "k"},
        {"collapseKey": "k", "ttl": "10.000000001s"},
        {"notification": {"title": "t", "body": "b", "channel_id": "c", "color": "#a0B1c2", "tag": "x"}},
        {"notification": {"notification_priority": "PRIORITY_MAX", "visibility": "PRIVATE", "click_action": "A",
                          "title_loc_key": "T", "title_loc_args": ["1"], "body_loc_key": "B", "body_loc_args": []}},
        {"data": {"a": "b"}, "direct_boot_ok": True},
    ],
)
def test_good_shapes_are_accepted(standin, bearer, http, android):
    message = {"token": DEVICE, "notification": {"title": "t", "body": "b", "image": "https://x/y.png"},
               "android": android}
    resp = send(http, standin, bearer, message)
    assert resp.status_code == 200, resp.text
    assert standin.messages(DEVICE)[-1].message == message


def test_validate_only_is_not_delivered(standin, bearer, http):
    resp = send(http, standin, bearer, {"token": DEVICE}, validate_only=True)
    assert resp.status_code == 200
    assert resp.json()["name"] == f"projects/{PROJECT}/messages/fake_message_id"
    assert standin.messages(DEVICE) == []


# --------------------------------------------------------------------------
# configured behaviours
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, code, status",
    [
        ("UNREGISTERED", 404, "NOT_FOUND"),
        ("SENDER_ID_MISMATCH", 403, "PERMISSION_DENIED"),
        ("INVALID_ARGUMENT", 400, "INVALID_ARGUMENT"),
        ("QUOTA_EXCEEDED", 429, "RESOURCE_EXHAUSTED"),
        ("UNAVAILABLE", 503, "UNAVAILABLE"),
        ("INTERNAL", 500, "INTERNAL"),
    ],
)
def test_each_error_behaviour(standin, bearer, http, error, code, status):
    standin.set_behavior(DEVICE, error)
    for _ in range(2):  # without times it persists
        resp = send(http, standin, bearer, {"token": DEVICE})
        assert_google_error(resp, code, status, error)
        assert "retry-after" not in resp.headers
    assert standin.attempts(DEVICE) == 2
    assert standin.messages(DEVICE) == []
    # Other devices are unaffected.
    assert send(http, standin, bearer, {"token": "another-device"}).status_code == 200


@pytest.mark.parametrize("retry_after", [120, formatdate(time.time() + 90, usegmt=True)])
def test_retry_after_header(standin, bearer, http, retry_after):
    standin.set_behavior(DEVICE, "UNAVAILABLE", retry_after=retry_after)
    resp = send(http, standin, bearer, {"token": DEVICE})
    assert_google_error(resp, 503, "UNAVAILABLE", "UNAVAILABLE")
    assert resp.headers["retry-after"] == str(retry_after)


def test_times_then_success(standin, bearer, http):
    standin.set_behavior(DEVICE, "QUOTA_EXCEEDED", times=1, retry_after=60)
    first = send(http, standin, bearer, {"token": DEVICE})
    assert_google_error(first, 429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
    assert first.headers["retry-after"] == "60"
    second = send(http, standin, bearer, {"token": DEVICE})
    assert second.status_code == 200
    assert "retry-after" not in second.headers
    assert standin.attempts(DEVICE) == 2
    assert len(standin.messages(DEVICE)) == 1


def test_behaviour_applies_after_shape_checks(standin, bearer, http):
    standin.set_behavior(DEVICE, "UNREGISTERED", times=1)
    assert_google_error(send(http, standin, bearer, {"token": DEVICE, "data": {"a": 1}}), 400, "INVALID_ARGUMENT")
    # The bad request did not use up the configured failure.
    assert_google_error(send(http, standin, bearer, {"token": DEVICE}), 404, "NOT_FOUND", "UNREGISTERED")
    assert send(http, standin, bearer, {"token": DEVICE}).status_code == 200
    assert standin.attempts(DEVICE) == 3


def test_delay_stalls_the_answer(standin, bearer, http):
    standin.set_behavior(DEVICE, delay=0.3, times=1)
    started = time.monotonic()
    assert send(http, standin, bearer, {"token": DEVICE}).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert send(http, standin, bearer, {"token": DEVICE}).status_code == 200  # times=1: not delayed again
    assert standin.attempts(DEVICE) == 2


def test_set_behavior_rejects_unknown_error(standin):
    with pytest.raises(ValueError):
        standin.set_behavior(DEVICE, "NOT_AN_ERROR")
    with pytest.raises(ValueError):
        standin.set_behavior(DEVICE, "INTERNAL", times=0)


def test_reset_keeps_service_accounts_and_tokens(standin, sa_info, auth_session, http):
    token = token_for(sa_info, auth_session)
    standin.set_behavior(DEVICE, "INTERNAL")
    standin.reset()
    assert standin.token_requests == 0
    assert standin.attempts(DEVICE) == 0
    assert send(http, standin, token, {"token": DEVICE}).status_code == 200
    assert token_for(sa_info, auth_session)
    assert standin.token_requests == 1
    standin.reset()


# --------------------------------------------------------------------------
# lifecycle and command line
# --------------------------------------------------------------------------


def test_stop_is_idempotent_and_breaks_stalled_requests(auth_session):
    standin = FcmStandin().start()
    info = standin.new_service_account(PROJECT)
    token = token_for(info, auth_session)
    auth_session.close()  # drop the keep-alive connection to /token
    standin.set_behavior(DEVICE, delay=300)
    outcome: list[object] = []

    def stalled() -> None:
        with httpx.Client(trust_env=False, timeout=120.0) as client:
            try:
                outcome.append(send(client, standin, token, {"token": DEVICE}))
            except httpx.HTTPError as e:
                outcome.append(e)

    worker = threading.Thread(target=stalled)
    worker.start()
    wait_for(lambda: standin.attempts(DEVICE) > 0, timeout=30, interval=0.01, what="the stalled request")
    started = time.monotonic()
    standin.stop()
    standin.stop()
    worker.join(60)
    # The answer would take 5 minutes and the client waits 2: stop broke the request, well within both.
    assert time.monotonic() - started < 30
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.HTTPError)
    assert standin.messages(DEVICE) == []
    with pytest.raises(RuntimeError):
        standin.start()


def test_help_explains_usage(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "--host" in out and "--port" in out and "messages:send" in out


def test_command_line_server(tmp_path, auth_session):
    sa_path = tmp_path / "sa.json"
    env = dict(os.environ, PYTHONWARNINGS="error")
    with subprocess.Popen(
        [sys.executable, "-m", "standins.fcm", "--port", "0", "--project", "cli-demo",
         "--write-service-account", str(sa_path)],
        cwd=MAIN_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            lines = [proc.stdout.readline(), proc.stdout.readline()]
            assert "listening on http://127.0.0.1:" in lines[1], lines
            info = json.loads(sa_path.read_text())
            assert (sa_path.stat().st_mode & 0o777) == 0o600
            token = token_for(info, auth_session)
            base_url = info["token_uri"].rsplit("/token", 1)[0]
            with httpx.Client(trust_env=False, timeout=10.0) as client:
                resp = client.post(f"{base_url}/v1/projects/cli-demo/messages:send",
                                   json={"message": {"token": DEVICE}},
                                   headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 200, resp.text
        finally:
            auth_session.close()
            proc.terminate()
            _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
