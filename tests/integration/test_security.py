"""Security rules (README "Security"), through the real API where a caller would meet them.

* egress: Web Push endpoints outside the push-service allowlist are refused at registration;
* registration is bound to the app the user is enrolled in, with a device cap;
* the token endpoint throttles failed client authentications before scrypt runs, and
  a revoked client's tokens stop working within 60 s;
* only tokens carrying the service-token claim are service tokens;
* unparseable JSON is a 400, database errors never log their parameters, quota refunds
  never leave a Redis key without expiry; FCM keys may only name Google's token endpoint.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from api.app import create_app
from api.auth import REVOKED_CLIENTS_REFRESH_SECONDS, RevokedClients, TokenVerifier
from cli import main as cli
from shared.config import ConfigError, Settings
from shared.db import make_engine, session_scope
from shared.egress import EndpointRefused, check_push_endpoint, is_public_address
from shared.guards import DailyQuota
from shared.models import Device
from shared.services import clients
from shared.services.apps import GOOGLE_TOKEN_URI, set_fcm_credentials
from shared.token_signing import mint_token
from tests.support.harness import TEST_ENV, LiveServer

# -- helpers -------------------------------------------------------------------------------


def subscription(push_service, endpoint: str) -> str:
    """A well-formed PushSubscription (real keys from the stand-in) with ``endpoint``."""
    return json.dumps({**push_service.new_subscription(), "endpoint": endpoint})


def register(http, tenant, user_id: uuid.UUID, platform: str, push_token: str):
    return http.post("/push/devices/register", headers=tenant.user_headers(user_id),
                     json={"app_id": str(tenant.id), "platform": platform, "push_token": push_token})


def assert_refused_endpoint(response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "message", "reason"}
    assert (body["error"], body["message"]) == ("invalid_push_token", "Invalid push token")
    return body["reason"]


def ios_token() -> str:
    return secrets.token_hex(32)


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


GRANT = {"grant_type": "client_credentials"}


@pytest.fixture
def user(tenant) -> uuid.UUID:
    user_id = uuid.uuid4()
    tenant.enroll(user_id)
    return user_id


@pytest.fixture(scope="module")
def production_api(settings: Settings, database) -> Iterator[httpx.Client]:
    """The API as production runs it: PUSHQ_ALLOW_HTTP_ENDPOINTS off (the test settings turn it on for
    the stand-ins), one extra push host configured, served on a real socket."""
    strict = settings.replace(allow_http_endpoints=False, webpush_extra_hosts=("push.example.org", "*.up.example.net"))
    server = LiveServer(create_app(strict)).start()
    with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as http:
        yield http
    server.stop()


@pytest.fixture
def strict_api(production_api: httpx.Client, engine) -> httpx.Client:
    """``production_api`` with the per-test clean state (``engine`` triggers the truncation)."""
    return production_api


# -- 1. egress rules at registration ---------------------------------------------------------

# Each rule's own reason (shared/egress.py), so a test says which rule refused, not merely that one did.
CONTROL = "endpoint contains spaces, control characters or backslashes"
NON_ASCII = "endpoint contains non-ASCII characters (host names are written in their xn-- form)"
NOT_A_URL = "endpoint is not a valid URL"
NOT_HTTPS = "endpoint must be an https URL"
USERINFO = "endpoint must not contain user information (user:password@)"
PORT_RANGE = "endpoint port is not a number between 0 and 65535"
NO_HOST = "endpoint has no host"
IP_LITERAL = "endpoint host must be a push service's name, not an IP address"
PORT_443 = "endpoint port must be 443"
BAD_NAME = "endpoint host is not a valid host name"
UNKNOWN_HOST = "endpoint host is not a known push service (an operator can add it with PUSHQ_WEBPUSH_EXTRA_HOSTS)"

REFUSED_ENDPOINTS = {
    "https://127.0.0.1:5432/x": IP_LITERAL,
    "https://localhost/x": UNKNOWN_HOST,
    "https://169.254.169.254/latest/meta-data/": IP_LITERAL,
    "https://[::1]:6379/x": IP_LITERAL,
    "https://[::ffff:127.0.0.1]/x": IP_LITERAL,
    "https://0x7f000001/x": IP_LITERAL,
    "https://2130706433/x": IP_LITERAL,
    "https://10.0.0.5/x": IP_LITERAL,
    "https://192.168.1.1/x": IP_LITERAL,
    "https://user:pw@fcm.googleapis.com/fcm/send/abc": USERINFO,
    "https://metadata.google.internal/x": UNKNOWN_HOST,
    "https://evil.example.com/x": UNKNOWN_HOST,
    "http://fcm.googleapis.com/x": NOT_HTTPS,
    "ftp://fcm.googleapis.com/x": NOT_HTTPS,
    # more spellings of the same ideas
    "https://0177.0.0.1/x": IP_LITERAL,
    "https://127.1/x": IP_LITERAL,
    "https://fcm.googleapis.com:8443/x": PORT_443,
    "https://fcm.googleapis.com.evil.example.com/x": UNKNOWN_HOST,
    "https://evil.example.com\\@fcm.googleapis.com/x": CONTROL,
    "https://fcm.googleapis.com./x": BAD_NAME,
    "https://push.apple.com/x": UNKNOWN_HOST,  # *.push.apple.com means subdomains only
    "https://push.example.org:444/x": PORT_443,
    "http://127.0.0.1:8080/x": NOT_HTTPS,  # loopback http only with PUSHQ_ALLOW_HTTP_ENDPOINTS
    # ports out of range or odd
    "https://fcm.googleapis.com:99999/x": PORT_RANGE,
    "https://fcm.googleapis.com:65536/x": PORT_RANGE,
    "https://fcm.googleapis.com:-1/x": PORT_RANGE,
    "https://fcm.googleapis.com:0/x": PORT_443,
    "https://:443/x": NO_HOST,
    # control characters and spaces
    "https://fcm.googleapis.com/fcm/send/a\x01b": CONTROL,
    "https://fcm.googleapis.com\t/x": CONTROL,
    "https://fcm.googleapis.com/fcm/send/a b": CONTROL,
    "https://fcm.googleapis.com/\x7f": CONTROL,
    # non-ASCII hosts: homoglyphs, full-width forms and characters NFKC folds into URL syntax
    "https://f\u0441m.googleapis.com/x": NON_ASCII,  # Cyrillic es
    "https://fcm\u3002googleapis.com/x": NON_ASCII,  # ideographic full stop
    "https://fcm.googleapis.com:\uff14\uff14\uff13/x": NON_ASCII,  # full-width 443
    "https://fcm.googleapis.com\u2100/x": NON_ASCII,  # "a/c" under NFKC: urlsplit raised (a 500)
    "https://fcm.googleapis.c\u00f6m/x": NON_ASCII,
    "https://xn--fcm-xxa.googleapis.com/x": UNKNOWN_HOST,  # the ASCII form is judged as a name
    "https://[::1/x": NOT_A_URL,  # urlsplit raised (a 500)
}


@pytest.mark.parametrize(("endpoint", "reason"), REFUSED_ENDPOINTS.items(), ids=list(map(ascii, REFUSED_ENDPOINTS)))
def test_endpoints_outside_the_push_services_are_refused_at_registration(
    strict_api, tenant, user, push_service, session_factory, endpoint, reason
):
    assert assert_refused_endpoint(register(strict_api, tenant, user, "web", subscription(push_service, endpoint))) \
        == reason
    with session_factory() as session:
        assert session.query(Device).count() == 0


def test_every_rule_has_its_own_reason():
    assert len({CONTROL, NON_ASCII, NOT_A_URL, NOT_HTTPS, USERINFO, PORT_RANGE, NO_HOST, IP_LITERAL, PORT_443, BAD_NAME,
                UNKNOWN_HOST}) == 11
    assert set(REFUSED_ENDPOINTS.values()) == {CONTROL, NON_ASCII, NOT_A_URL, NOT_HTTPS, USERINFO, PORT_RANGE, NO_HOST,
                                               IP_LITERAL, PORT_443, BAD_NAME, UNKNOWN_HOST}


ACCEPTED_ENDPOINTS = [
    "https://fcm.googleapis.com/fcm/send/abc:APA91b",
    "https://FCM.googleapis.com:443/fcm/send/abc",
    "https://android.googleapis.com/gcm/send/abc",
    "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABc",
    "https://wns2-par02p.notify.windows.com/w/?token=BQYAAAD",
    "https://web.push.apple.com/QOu6PZ2vb8nT",
    "https://push.example.org/sub/1",  # PUSHQ_WEBPUSH_EXTRA_HOSTS
    "https://eu.up.example.net/sub/1",  # *.up.example.net
]


@pytest.mark.parametrize("endpoint", ACCEPTED_ENDPOINTS)
def test_push_service_endpoints_are_accepted(strict_api, tenant, user, push_service, endpoint):
    response = register(strict_api, tenant, user, "web", subscription(push_service, endpoint))
    assert response.status_code == 201, response.text


def test_development_setting_allows_http_to_loopback_only(api, tenant, user, push_service):
    """The test settings are the development setup: the stand-in (http on 127.0.0.1) works, nothing else http."""
    assert register(api, tenant, user, "web", json.dumps(push_service.new_subscription())).status_code == 201
    for endpoint in ("http://[::1]:6379/x", "http://localhost:1/x"):
        assert register(api, tenant, user, "web", subscription(push_service, endpoint)).status_code == 201
    for endpoint, reason in (("http://10.0.0.5/x", NOT_HTTPS), ("http://evil.example.com/x", NOT_HTTPS),
                             ("https://127.0.0.1/x", IP_LITERAL)):
        assert assert_refused_endpoint(register(api, tenant, user, "web", subscription(push_service, endpoint))) == reason


def test_extra_hosts_must_be_host_names():
    for bad in ("10.0.0.0/8", "127.0.0.1", "push.example.org:8443", "https://push.example.org", "*"):
        with pytest.raises(ConfigError, match="PUSHQ_WEBPUSH_EXTRA_HOSTS"):
            Settings.from_env({**TEST_ENV, "PUSHQ_WEBPUSH_EXTRA_HOSTS": f"push.example.org {bad}"})
    parsed = Settings.from_env({**TEST_ENV, "PUSHQ_WEBPUSH_EXTRA_HOSTS": "push.example.org,*.up.example.net"})
    assert parsed.webpush_extra_hosts == ("push.example.org", "*.up.example.net")


def test_check_push_endpoint_gives_a_reason():
    with pytest.raises(EndpointRefused) as refused:
        check_push_endpoint("https://2130706433/x")
    assert "IP address" in refused.value.reason
    check_push_endpoint("https://fcm.googleapis.com/fcm/send/x")  # no exception


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True), ("2606:4700::1111", True), ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False), ("10.0.0.5", False), ("192.168.1.1", False), ("169.254.169.254", False),
        ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("255.255.255.255", False),
        ("::1", False), ("fe80::1", False), ("fc00::1", False), ("ff02::1", False),
        ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.5", False), ("::7f00:1", False),
        ("2002:7f00:1::", False), ("64:ff9b::7f00:1", False), ("not an address", False),
        # site-local fec0::/10 (Python's is_global says True), Teredo, documentation, SRv6, discard
        ("fec0::1", False), ("feff::1", False), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False), ("2001::1", False),
        ("2001:db8::1", False), ("3fff::1", False), ("5f00::1", False), ("100::1", False),
        # IPv4 inside IPv6: IPv4-compatible, 6to4 and NAT64 of private v4 refused; of public v4, public
        ("::a00:5", False), ("::808:808", False), ("2002:a00:5::1", False), ("64:ff9b::a00:5", False),
        ("64:ff9b:1::a00:5", False), ("2002:808:808::1", True), ("64:ff9b::808:808", True),
        ("2001:4860:4860::8888", True),
    ],
)
def test_is_public_address(address, public):
    assert is_public_address(address) is public


# -- 2. FCM token_uri ------------------------------------------------------------------------


def service_account(token_uri: str) -> str:
    return json.dumps({"type": "service_account", "project_id": "p", "client_email": "sa@p.iam.gserviceaccount.com",
                       "private_key": "-----BEGIN PRIVATE KEY-----\n...", "private_key_id": "k1", "token_uri": token_uri})


@pytest.mark.parametrize("token_uri", [
    "http://169.254.169.254/computeMetadata/v1/token", "https://oauth2.googleapis.com.evil.example/token",
    "http://oauth2.googleapis.com/token", "https://oauth2.googleapis.com/token?x=1", "https://evil.example/token",
])
def test_fcm_token_uri_must_be_googles(tenant, session_factory, token_uri):
    with pytest.raises(ValueError, match=r"token_uri must be https://oauth2\.googleapis\.com/token"), \
            session_scope(session_factory) as session:
        set_fcm_credentials(session, tenant.id, service_account(token_uri))
    with session_scope(session_factory) as session:
        set_fcm_credentials(session, tenant.id, service_account(GOOGLE_TOKEN_URI))


def test_fcm_token_uri_may_be_the_configured_base_urls_token_endpoint(tenant, session_factory, fcm_service):
    assert fcm_service.token_uri == fcm_service.base_url + "/token"
    with session_scope(session_factory) as session:
        set_fcm_credentials(session, tenant.id, service_account(fcm_service.token_uri), fcm_base_url=fcm_service.base_url)
    with pytest.raises(ValueError, match="token_uri"), session_scope(session_factory) as session:
        set_fcm_credentials(session, tenant.id, service_account(fcm_service.base_url + "/other"),
                            fcm_base_url=fcm_service.base_url)


def test_set_fcm_cli_refuses_a_foreign_token_uri_clearly(tenant, tmp_path):
    key_file = tmp_path / "key.json"
    key_file.write_text(service_account("http://169.254.169.254/token"))
    result = CliRunner().invoke(cli, ["set-fcm", str(tenant.id), "--service-account", str(key_file)], env=TEST_ENV)
    assert result.exit_code == 1
    assert "token_uri must be https://oauth2.googleapis.com/token" in result.output
    assert "Traceback" not in result.output


# -- 3. registration bound to the app ----------------------------------------------------------


def test_registration_into_an_app_the_user_is_not_enrolled_in_is_404(api, tenant, other_tenant, session_factory):
    stranger = uuid.uuid4()
    other_tenant.enroll(stranger)  # enrolled elsewhere, not in tenant
    not_enrolled = register(api, tenant, stranger, "ios", ios_token())
    unknown_app = api.post("/push/devices/register", headers=tenant.user_headers(stranger),
                           json={"app_id": str(uuid.uuid4()), "platform": "ios", "push_token": ios_token()})
    for response in (not_enrolled, unknown_app):
        assert response.status_code == 404
        assert response.json() == {"error": "app_not_found", "message": "App not found"}
    with session_factory() as session:
        assert session.query(Device).count() == 0


def test_unenrolled_user_cannot_register_any_more(api, tenant, user):
    assert register(api, tenant, user, "ios", ios_token()).status_code == 201
    assert api.delete(f"/push/enrollments/{user}", headers=tenant.service_headers()).status_code == 200
    assert register(api, tenant, user, "ios", ios_token()).status_code == 404


@pytest.fixture
def capped_client(settings: Settings, database, engine):
    return create_app(settings.replace(max_devices_per_user=3)).test_client()


def test_registering_beyond_the_device_cap_disables_the_least_recently_seen(capped_client, tenant, user, session_factory):
    tokens = [ios_token() for _ in range(5)]
    ids = [register(capped_client, tenant, user, "ios", token).get_json()["device_id"] for token in tokens[:3]]
    # device 0 is seen again: device 1 is now the least recently seen
    assert register(capped_client, tenant, user, "ios", tokens[0]).get_json()["device_id"] == ids[0]
    ids.append(register(capped_client, tenant, user, "ios", tokens[3]).get_json()["device_id"])

    listed = capped_client.get(f"/push/devices?user_id={user}", headers=tenant.service_headers()).get_json()["items"]
    state = {d["id"]: d["disabled_reason"] for d in listed}
    assert state == {ids[0]: None, ids[1]: "replaced: device limit", ids[2]: None, ids[3]: None}

    # re-registering the replaced device brings it back and replaces the next least recently seen (device 2)
    assert register(capped_client, tenant, user, "ios", tokens[1]).get_json()["device_id"] == ids[1]
    with session_factory() as session:
        active = session.query(Device).filter(Device.user_id == user, Device.disabled_at.is_(None)).all()
        assert sorted(str(d.id) for d in active) == sorted([ids[0], ids[1], ids[3]])
        assert session.get(Device, uuid.UUID(ids[2])).disabled_reason == "replaced: device limit"


def test_the_cap_is_per_user_and_per_app(capped_client, tenant, other_tenant, user, session_factory):
    other_user = uuid.uuid4()
    tenant.enroll(other_user)
    other_tenant.enroll(user)
    for _ in range(3):
        assert register(capped_client, tenant, user, "ios", ios_token()).status_code == 201
        assert register(capped_client, tenant, other_user, "ios", ios_token()).status_code == 201
        assert register(capped_client, other_tenant, user, "ios", ios_token()).status_code == 201
    with session_factory() as session:
        assert session.query(Device).filter(Device.disabled_at.is_not(None)).count() == 0


def test_a_device_moves_to_another_user_only_with_its_token_and_never_across_apps(
    api, tenant, other_tenant, user, session_factory
):
    token, other_user = ios_token(), uuid.uuid4()
    tenant.enroll(other_user)
    other_tenant.enroll(other_user)
    device_id = register(api, tenant, user, "ios", token).json()["device_id"]

    elsewhere = register(api, other_tenant, other_user, "ios", token).json()["device_id"]
    assert elsewhere != device_id
    with session_factory() as session:
        original = session.get(Device, uuid.UUID(device_id))
        assert (original.app_id, original.user_id) == (tenant.id, user)

    assert register(api, tenant, other_user, "ios", token).json()["device_id"] == device_id
    with session_factory() as session:
        moved = session.get(Device, uuid.UUID(device_id))
        assert (moved.app_id, moved.user_id) == (tenant.id, other_user)
        assert session.get(Device, uuid.UUID(elsewhere)).app_id == other_tenant.id


# -- 4. throttled token endpoint ---------------------------------------------------------------


@pytest.fixture
def scrypt_calls(monkeypatch) -> list[int]:
    """Counts the scrypt hashes computed while verifying secrets."""
    calls: list[int] = []
    real = clients._scrypt

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(clients, "_scrypt", counting)
    return calls


def new_client(session_factory, app_id) -> tuple[str, str]:
    with session_scope(session_factory) as session:
        return clients.create_client(session, app_id, ["push:send"])


def test_sixty_bad_secrets_are_throttled_before_scrypt_runs(client, settings, tenant, session_factory, scrypt_calls):
    client_id, secret = new_client(session_factory, tenant.id)
    scrypt_calls.clear()  # creating the client hashed its secret
    statuses = [client.post("/oauth/token", data=GRANT, headers=basic(client_id, f"wrong-{n}")).status_code
                for n in range(60)]
    limit = settings.token_failures_per_client
    assert statuses == [401] * limit + [429] * (60 - limit)
    assert len(scrypt_calls) == limit  # the refused 50 never reached the hash

    refused = client.post("/oauth/token", data=GRANT, headers=basic(client_id, secret))
    assert refused.status_code == 429  # the client is locked out for the window, even with its secret
    assert refused.get_json() == {"error": "rate_limited",
                                  "message": "Too many failed client authentications, try again later"}
    assert 1 <= int(refused.headers["Retry-After"]) <= settings.token_failure_window_seconds
    assert refused.headers["Cache-Control"] == "no-store"
    assert len(scrypt_calls) == limit

    another_id, another_secret = new_client(session_factory, tenant.id)  # same address, other client: still room
    assert client.post("/oauth/token", data=GRANT, headers=basic(another_id, another_secret)).status_code == 200


def test_guessing_across_client_ids_is_throttled_per_address(client, settings, tenant, session_factory, scrypt_calls):
    attacker = {"REMOTE_ADDR": "203.0.113.7"}
    statuses = [client.post("/oauth/token", data=GRANT, headers=basic(f"pqc_guess{n}", "x"),
                            environ_base=attacker).status_code for n in range(60)]
    limit = settings.token_failures_per_address
    assert statuses == [401] * limit + [429] * (60 - limit)
    assert scrypt_calls == []  # unknown client ids are refused without hashing anything
    client_id, secret = new_client(session_factory, tenant.id)
    assert client.post("/oauth/token", data=GRANT, headers=basic(client_id, secret),
                       environ_base={"REMOTE_ADDR": "198.51.100.1"}).status_code == 200  # other addresses unaffected


def test_an_ipv6_slash_64_is_one_address(client, settings, tenant, session_factory):
    """One subscriber holds a whole /64: rotating through its addresses must not reset the per-address window."""
    limit = settings.token_failures_per_address
    statuses = [client.post("/oauth/token", data=GRANT, headers=basic(f"pqc_guess{n}", "x"),
                            environ_base={"REMOTE_ADDR": f"2001:db8:1:2:{n:x}::{n + 1:x}"}).status_code
                for n in range(limit + 5)]
    assert statuses == [401] * limit + [429] * 5
    mapped = client.post("/oauth/token", data=GRANT, headers=basic("pqc_guess", "x"),
                         environ_base={"REMOTE_ADDR": "2001:db8:1:2::ffff"})
    assert mapped.status_code == 429
    client_id, secret = new_client(session_factory, tenant.id)
    for neighbour in ("2001:db8:1:3::1", "203.0.113.9"):  # the next /64, and IPv4, are other addresses
        assert client.post("/oauth/token", data=GRANT, headers=basic(client_id, secret),
                           environ_base={"REMOTE_ADDR": neighbour}).status_code == 200


def test_unknown_malformed_and_revoked_client_ids_cost_no_hash(client, tenant, session_factory, scrypt_calls):
    client_id, secret = new_client(session_factory, tenant.id)
    with session_scope(session_factory) as session:
        clients.revoke_client(session, client_id)
    scrypt_calls.clear()
    for candidate in ("pqc_" + secrets.token_urlsafe(18), "not\x00printable", "x" * 65, client_id):
        refused = client.post("/oauth/token", data={**GRANT, "client_id": candidate, "client_secret": secret})
        assert (refused.status_code, refused.get_json()["error"]) == (401, "invalid_client"), candidate
    assert scrypt_calls == []
    live_id, live_secret = new_client(session_factory, tenant.id)
    scrypt_calls.clear()
    assert client.post("/oauth/token", data=GRANT, headers=basic(live_id, "wrong")).status_code == 401
    assert client.post("/oauth/token", data=GRANT, headers=basic(live_id, live_secret)).status_code == 200
    assert len(scrypt_calls) == 2  # a live client's secret is always hashed, right or wrong


def test_hashing_is_bounded_per_process(settings, database, engine, tenant, session_factory, monkeypatch):
    """PUSHQ_TOKEN_HASH_CONCURRENCY=1, over HTTP: while one secret is being hashed, another authentication finds
    no slot and is answered 503 at once (not queued without bound, not counted as a failure); then it succeeds."""
    entered, release = threading.Event(), threading.Event()
    real = clients._scrypt

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(timeout=30)
        return real(*args, **kwargs)

    first_id, first_secret = new_client(session_factory, tenant.id)
    second_id, second_secret = new_client(session_factory, tenant.id)
    server = LiveServer(create_app(settings.replace(token_hash_concurrency=1))).start()
    monkeypatch.setattr(clients, "_scrypt", held)
    try:
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as http, \
                ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(http.post, "/oauth/token", data=GRANT, headers=basic(first_id, first_secret))
            assert entered.wait(timeout=10)
            busy = http.post("/oauth/token", data=GRANT, headers=basic(second_id, second_secret))
            assert busy.status_code == 503, busy.text
            assert busy.json() == {"error": "temporarily_unavailable",
                                   "message": "Too many client authentications in progress, try again shortly"}
            assert (busy.headers["Retry-After"], busy.headers["Cache-Control"]) == ("1", "no-store")
            release.set()
            assert first.result(timeout=30).status_code == 200
            monkeypatch.setattr(clients, "_scrypt", real)
            limit = settings.token_failures_per_client  # the 503 left nothing in the client's failure window
            statuses = [http.post("/oauth/token", data=GRANT, headers=basic(second_id, "wrong")).status_code
                        for _ in range(limit + 1)]
            assert statuses == [401] * limit + [429]
    finally:
        release.set()
        server.stop()


def test_successful_authentications_do_not_count(client, settings, tenant, session_factory):
    client_id, secret = new_client(session_factory, tenant.id)
    for _ in range(settings.token_failures_per_client + 5):
        assert client.post("/oauth/token", data=GRANT, headers=basic(client_id, secret)).status_code == 200


def test_token_endpoint_tokens_carry_the_client_id_and_the_service_claim(client, settings, tenant, session_factory):
    client_id, secret = new_client(session_factory, tenant.id)
    token = client.post("/oauth/token", data=GRANT, headers=basic(client_id, secret)).get_json()["access_token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert (claims["client_id"], claims["sub"], claims["token_use"]) == (client_id, client_id, "service")
    assert TokenVerifier(settings).verify(f"Bearer {token}").is_service


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_revoked_clients_tokens_are_refused_within_sixty_seconds(settings, database, engine, tenant, session_factory):
    clock = FakeClock()

    def load() -> frozenset[str]:
        with session_scope(session_factory) as session:
            return clients.revoked_client_ids(session)

    app = create_app(settings)
    app.extensions["pushq"].verifier = TokenVerifier(settings, revoked_clients=RevokedClients(load, clock=clock))
    http = app.test_client()
    client_id, secret = new_client(session_factory, tenant.id)
    token = http.post("/oauth/token", data=GRANT, headers=basic(client_id, secret)).get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert http.get("/push/enrollments", headers=headers).status_code == 200

    with session_scope(session_factory) as session:
        clients.revoke_client(session, client_id)
    revoked_at = clock.now
    while http.get("/push/enrollments", headers=headers).status_code == 200:
        clock.now += 1
        assert clock.now - revoked_at <= 60, "a revoked client's token still works after 60 s"
    assert http.get("/push/enrollments", headers=headers).get_json()["error"] == "invalid_token"
    assert clock.now - revoked_at <= REVOKED_CLIENTS_REFRESH_SECONDS
    # tokens of other clients are unaffected
    other_id, other_secret = new_client(session_factory, tenant.id)
    other = http.post("/oauth/token", data=GRANT, headers=basic(other_id, other_secret)).get_json()["access_token"]
    assert http.get("/push/enrollments", headers={"Authorization": f"Bearer {other}"}).status_code == 200


def test_revoked_clients_are_reloaded_at_most_every_thirty_seconds():
    clock, loads = FakeClock(), []
    revoked = RevokedClients(lambda: loads.append(1) or {"pqc_a"}, clock=clock)
    assert "pqc_a" in revoked and "pqc_b" not in revoked
    clock.now += 29
    assert "pqc_a" in revoked
    assert len(loads) == 1
    clock.now += 1
    assert "pqc_a" in revoked
    assert len(loads) == 2


def test_a_failed_reload_keeps_the_last_set(caplog):
    clock, answers = FakeClock(), [{"pqc_a"}]

    def load():
        if not answers:
            raise ConnectionError("database down")
        return answers.pop()

    revoked = RevokedClients(load, clock=clock)
    assert "pqc_a" in revoked
    clock.now += 31
    with caplog.at_level(logging.WARNING, logger="api.auth"):
        assert "pqc_a" in revoked
    assert "reloading revoked OAuth clients failed" in caplog.text


# -- 5. service tokens vs user tokens -------------------------------------------------------------


def test_a_user_token_with_app_id_and_scope_claims_gets_no_service_rights(api, tenant, user):
    """An identity provider's user token may carry app_id/scope; without the service claim they grant nothing."""
    headers = tenant.user_headers(user, extra={"app_id": str(tenant.id), "scope": "push:send"})
    sent = api.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"}, headers=headers)
    assert (sent.status_code, sent.json()["error"]) == (403, "missing_scope")
    assert api.get("/push/enrollments", headers=headers).status_code == 403
    assert api.get("/push/devices", headers=headers).status_code == 403
    # it still is a user token: the user registers their own device
    assert register(api, tenant, user, "ios", ios_token()).status_code == 201
    with_claims = api.post("/push/devices/register", headers=headers,
                           json={"app_id": str(tenant.id), "platform": "ios", "push_token": ios_token()})
    assert with_claims.status_code == 201


def test_a_service_claim_without_app_id_is_401(api, tenant, user, settings):
    token = mint_token(settings, subject="svc", extra={"token_use": "service", "scope": "push:send"})
    response = api.get("/push/enrollments", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_tokens_pushq_mints_are_service_tokens(settings, tenant):
    result = CliRunner().invoke(cli, ["token", "service", str(tenant.id)], env=TEST_ENV)
    assert result.exit_code == 0, result.output
    principal = TokenVerifier(settings).verify(f"Bearer {result.stdout.strip()}")
    assert principal.is_service and principal.app_id == tenant.id and "push:send" in principal.scopes


@pytest.mark.parametrize(
    ("rule", "service_claims", "user_claims"),
    [
        ("gty=client-credentials", {"gty": "client-credentials"}, {"gty": "password", "token_use": "service"}),
        ("roles=pushq-service", {"roles": ["reader", "pushq-service"]}, {"roles": ["reader"]}),
    ],
)
def test_an_operator_chooses_the_claim_that_makes_a_service_token(settings, tenant, rule, service_claims, user_claims):
    configured = settings.replace(service_token_claim=rule)
    verifier = TokenVerifier(configured)
    base = {"app_id": str(tenant.id), "scope": "push:send"}
    service = mint_token(configured, subject="svc", extra={**base, **service_claims})
    assert verifier.verify(f"Bearer {service}").is_service
    user_id = uuid.uuid4()
    not_service = verifier.verify(f"Bearer {mint_token(configured, subject=str(user_id), extra={**base, **user_claims})}")
    assert (not_service.is_service, not_service.user_id, not_service.scopes) == (False, user_id, frozenset())
    # what pushq mints under this setting passes too
    assert verifier.verify(f"Bearer {mint_token(configured, subject='svc', app_id=tenant.id)}").is_service


@pytest.mark.parametrize("rule", ["service", "=service", "token_use=", "scope=push:send", "app_id=x", "sub=svc"])
def test_the_service_claim_setting_is_checked(rule):
    with pytest.raises(ConfigError, match="PUSHQ_SERVICE_TOKEN_CLAIM"):
        Settings.from_env({**TEST_ENV, "PUSHQ_SERVICE_TOKEN_CLAIM": rule})


# -- 6. bad input is 4xx; no parameters in logs; refunds keep their expiry -----------------------------


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000, b'{"title": "\xff\xfe"}', b"\xff\xfe{\x00"],
    ids=["open-arrays", "open-objects", "closed-arrays", "invalid-utf8", "bad-encoding"],
)
@pytest.mark.parametrize("path", ["/push/devices/register", "/push/send", "/push/enrollments"])
def test_json_the_parser_cannot_take_is_400(api, tenant, user, raw, path):
    headers = tenant.user_headers(user) if path.endswith("register") else tenant.service_headers()
    response = api.post(path, content=raw, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "malformed_json", "message": "Request body is not valid JSON"}


def test_database_errors_never_carry_statement_parameters(settings, database):
    engine = make_engine(settings.database_url)
    secret_value = "very-secret-push-token-" + secrets.token_hex(8)
    try:
        assert engine.hide_parameters
        with pytest.raises(IntegrityError) as failure, engine.begin() as connection:  # a foreign-key violation
            connection.execute(text("INSERT INTO devices (id, app_id, user_id, platform, token, token_hash, created_at, "
                                    "last_seen_at) VALUES (:id, :app, :user, 'ios', :token, 'h', now(), now())"),
                               {"id": uuid.uuid4(), "app": uuid.uuid4(), "user": uuid.uuid4(), "token": secret_value})
        assert secret_value not in str(failure.value)
        assert "parameters hidden" in str(failure.value)
    finally:
        engine.dispose()


def test_a_database_error_in_a_request_is_logged_without_values(settings, database, engine, caplog):
    """PostgreSQL's own message repeats the row ("Failing row contains (...)"): the API logs the statement only."""
    app = create_app(settings)
    secret_value = "very-secret-user-data-" + secrets.token_hex(8)

    def broken_view():
        from api.request_session import db_session

        db_session().execute(text("INSERT INTO enrollments (app_id, user_id, created_at) VALUES (:app, NULL, :when)"),
                             {"app": secret_value, "when": secret_value})
        return {}

    app.add_url_rule("/broken", "broken", broken_view)
    with caplog.at_level(logging.INFO):
        response = app.test_client().get("/broken")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal_error", "message": "Internal server error"}
    assert "INSERT INTO enrollments" in caplog.text
    assert secret_value not in caplog.text


def test_a_refund_never_leaves_a_counter_without_expiry(redis_client):
    quota = DailyQuota(redis_client)
    app_id, now = uuid.uuid4(), datetime.now(UTC)
    key = f"pushq:quota:{app_id}:{now:%Y-%m-%d}"
    quota.refund(app_id, 3, now)  # the key expired (or the day turned) before the refund
    assert not redis_client.exists(key)

    redis_client.set(key, 5)  # a counter left without expiry by an earlier version
    quota.refund(app_id, 2, now)
    assert int(redis_client.get(key)) == 3
    assert 0 < redis_client.ttl(key) <= 2 * 86_400

    quota.reserve(app_id, 1, 100, now)
    quota.refund(app_id, 10, now)  # more than was taken
    assert int(redis_client.get(key)) == 0 and redis_client.ttl(key) > 0
