"""Secrets at rest: tokens and vendor credentials are stored encrypted, looked up by a keyed
hash, survive key rotation, and never reach the database in clear or any log line."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import stat
import uuid
from collections.abc import Iterable
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from sqlalchemy import func, select, text

from cli import main
from cli.common import load_settings
from shared import crypto
from shared.config import ConfigError, Settings
from shared.db import session_scope
from shared.models import App, Base, Device
from shared.services.devices import register_device
from shared.services.enrollments import enroll
from shared.tokens import canonical_token
from tests.support.flows import final_notification, register_web
from tests.support.harness import TEST_ENV

# -- helpers -------------------------------------------------------------------------


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def key_fragments(pem: str) -> list[str]:
    """A private key in every form a leak could take: the PEM, its base64 body (whole and per
    line, as a JSON-escaped PEM keeps the lines), and for EC keys the raw scalar."""
    lines = [line for line in pem.strip().splitlines() if not line.startswith("-----")]
    fragments = [pem.strip(), "".join(lines), *(line for line in lines if len(line) >= 16)]
    key = load_pem_private_key(pem.encode(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        fragments += [b64url(scalar), scalar.hex()]
    return fragments


def ios_token() -> str:
    return secrets.token_hex(32)


def android_token() -> str:
    return secrets.token_urlsafe(48)


def register(api, tenant, user: uuid.UUID, platform: str, push_token: str) -> str:
    response = api.post(
        "/push/devices/register",
        json={"app_id": str(tenant.id), "platform": platform, "push_token": push_token},
        headers=tenant.user_headers(user),
    )
    assert response.status_code == 201, response.text
    return response.json()["device_id"]


def devices_on_three_platforms(api, tenant, push_service, apns_service, fcm_service):
    """An app with APNs and FCM credentials and a user with a web, an iOS and an Android device."""
    tenant.configure_apns(apns_service)
    tenant.configure_fcm(fcm_service)
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    ios, android = ios_token(), android_token()
    register_web(api, tenant, user, subscription)
    register(api, tenant, user, "ios", ios)
    register(api, tenant, user, "android", android)
    return user, subscription, ios, android


def cell_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def every_cell(engine) -> list[tuple[str, str, str]]:
    """(table, column, value as text) for every non-null cell of every table, read raw."""
    cells = []
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            result = connection.execute(text(f'SELECT * FROM "{table.name}"'))
            columns = list(result.keys())
            for row in result:
                cells.extend((table.name, column, cell_text(value)) for column, value in zip(columns, row) if value is not None)
    return cells


def leaks(haystack: str, needles: dict[str, str]) -> list[str]:
    return [name for name, needle in needles.items() if needle in haystack]


class Secrets:
    """Everything secret a tenant with devices on all three platforms has, by name."""

    def __init__(self) -> None:
        self.needles: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        assert len(value) >= 8, f"{name} is too short to search for"
        self.needles[name] = value

    def add_key(self, name: str, pem: str) -> None:
        for index, fragment in enumerate(key_fragments(pem)):
            self.add(f"{name}[{index}]", fragment)

    def add_subscription(self, name: str, subscription: dict) -> None:
        self.add(f"{name} endpoint", subscription["endpoint"])
        self.add(f"{name} endpoint id", subscription["endpoint"].rsplit("/", 1)[1])
        self.add(f"{name} p256dh", subscription["keys"]["p256dh"])
        self.add(f"{name} auth", subscription["keys"]["auth"])

    def add_app_credentials(self, session_factory, app_id: uuid.UUID) -> None:
        """The app's credentials as the ORM decrypts them."""
        with session_factory() as session:
            app = session.get(App, app_id)
            assert app is not None and app.apns_private_key and app.fcm_service_account
            vapid, apns, fcm = app.vapid_private_key, app.apns_private_key, json.loads(app.fcm_service_account)
        self.add_key("VAPID private key", vapid)
        self.add_key("APNs private key", apns)
        self.add_key("FCM private key", fcm["private_key"])


@pytest.fixture
def keys(settings: Settings) -> Iterable[dict[str, str]]:
    """Fernet keys A (the test key) and B (new); the test keyring is restored afterwards."""
    yield {"A": settings.encryption_keys[0], "B": Fernet.generate_key().decode()}
    crypto.configure(settings)


def use_keys(settings: Settings, *keys: str) -> None:
    crypto.configure(settings.replace(encryption_keys=keys))


def rotate_with_cli(settings: Settings, *keys: str) -> dict:
    env = {**TEST_ENV, "PUSHQ_ENCRYPTION_KEYS": ",".join(keys), "PUSHQ_TOKEN_HASH_KEY": settings.token_hash_key}
    result = CliRunner().invoke(main, ["rotate-keys"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- nothing in clear in the database ------------------------------------------------------


def test_no_table_holds_a_token_or_a_credential_in_clear(
    api, worker, tenant, push_service, apns_service, fcm_service, session_factory, engine
):
    user, subscription, ios, android = devices_on_three_platforms(api, tenant, push_service, apns_service, fcm_service)
    # A send too, so deliveries (vendor ids, errors) and idempotency records are scanned as well.
    sent = api.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"}, headers=tenant.service_headers())
    assert sent.status_code == 200, sent.text
    notification = final_notification(api, tenant, sent.json()["notification_id"])
    assert notification["status"] == "delivered", notification

    found = Secrets()
    found.add_subscription("web subscription", subscription)
    found.add("APNs device token", ios)
    found.add("FCM registration token", android)
    found.add_app_credentials(session_factory, tenant.id)
    with session_factory() as session:
        found.add("FCM private key id", json.loads(session.get(App, tenant.id).fcm_service_account)["private_key_id"])

    cells = every_cell(engine)
    assert [(t, c) for t, c, v in cells if v == tenant.vapid_public_key] == [("apps", "vapid_public_key")]  # the scan sees clear text
    assert {t for t, _, _ in cells} >= {"apps", "devices", "notifications", "deliveries", "enrollments"}
    exposed = [(table, column, name) for table, column, value in cells for name in leaks(value, found.needles)]
    assert exposed == []
    # ...while the application still reads every secret back.
    with session_factory() as session:
        tokens = {d.platform: d.token for d in session.scalars(select(Device))}
    assert tokens == {"web": json.dumps(subscription, separators=(",", ":"), sort_keys=True), "ios": ios, "android": android}


# -- the keyring ---------------------------------------------------------------------------


def test_encrypt_decrypt_round_trip():
    for value in ["", "ios-token", '{"endpoint": "https://push.example/ä✓"}', "-----BEGIN PRIVATE KEY-----\nabc\n"]:
        ciphertext = crypto.encrypt(value)
        assert ciphertext != value
        if value:
            assert value not in ciphertext
        assert crypto.decrypt(ciphertext) == value
    assert crypto.encrypt("same") != crypto.encrypt("same")  # randomized: never comparable in SQL
    with pytest.raises(crypto.UndecryptableValue) as raised:
        crypto.decrypt(Fernet(Fernet.generate_key()).encrypt(b"other key").decode())
    assert "PUSHQ_ENCRYPTION_KEYS" in str(raised.value)


def test_token_hash_is_a_keyed_hmac(settings: Settings):
    value = "https://push.example/sub/abc"
    digest = crypto.token_hash(value)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert digest != hashlib.sha256(value.encode()).hexdigest()
    other = crypto.Keyring(settings.encryption_keys, "another-token-hash-key-of-32-bytes-or-more")
    assert other.token_hash(value) != digest
    assert crypto.Keyring(settings.encryption_keys, settings.token_hash_key).token_hash(value) == digest


@pytest.mark.parametrize(
    ("keys", "hash_key", "message"),
    [
        ((), "h" * 32, "PUSHQ_ENCRYPTION_KEYS is not set"),
        (("not-a-fernet-key",), "h" * 32, "key 1 of 1 is not a Fernet key"),
        ((Fernet.generate_key().decode(), "c2hvcnQ="), "h" * 32, "key 2 of 2 is not a Fernet key"),
        ((Fernet.generate_key().decode(),), None, "PUSHQ_TOKEN_HASH_KEY is not set"),
        ((Fernet.generate_key().decode(),), "h" * 31, "PUSHQ_TOKEN_HASH_KEY must be at least 32 bytes"),
    ],
)
def test_missing_or_malformed_keys_are_refused_clearly(settings: Settings, keys, hash_key, message):
    with pytest.raises(ConfigError) as raised:
        crypto.Keyring(keys, hash_key)
    assert message in str(raised.value)
    for key in keys:
        assert key not in str(raised.value)  # never echo key material


def test_processes_refuse_to_start_without_keys(settings: Settings):
    from api.app import create_app

    try:
        with pytest.raises(ConfigError, match="PUSHQ_ENCRYPTION_KEYS"):
            create_app(settings.replace(encryption_keys=()))
    finally:
        crypto.configure(settings)


def test_an_unconfigured_process_says_so(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(crypto, "_keyring", None)
    with pytest.raises(ConfigError, match="configure"):
        crypto.encrypt("x")


# -- rotation -----------------------------------------------------------------------------


def seed(session_factory, tenant, apns_service, fcm_service, settings: Settings) -> dict[str, Any]:
    """An app with all three credentials and a device per platform; their plaintexts."""
    tenant.configure_apns(apns_service)
    tenant.configure_fcm(fcm_service)
    user = uuid.uuid4()
    tenant.enroll(user)
    tokens = {"ios": ios_token(), "android": android_token()}
    with session_scope(session_factory) as session:
        for platform, token in tokens.items():
            register_device(session, app_id=tenant.id, user_id=user, platform=platform, push_token=token)
    return {"app": read_app(session_factory, tenant.id), "tokens": read_tokens(session_factory)}


def read_app(session_factory, app_id: uuid.UUID) -> tuple[str, str | None, str | None]:
    with session_factory() as session:
        app = session.get(App, app_id)
        return app.vapid_private_key, app.apns_private_key, app.fcm_service_account


def read_tokens(session_factory) -> dict[str, str]:
    with session_factory() as session:
        return {d.platform: d.token for d in session.scalars(select(Device))}


def raw_ciphertexts(engine) -> list[str]:
    with engine.connect() as connection:
        apps = connection.execute(text("SELECT vapid_private_key, apns_private_key, fcm_service_account FROM apps")).all()
        devices = connection.execute(text("SELECT token FROM devices")).scalars().all()
    return [value for row in apps for value in row if value is not None] + list(devices)


def test_rotate_keys_moves_every_secret_to_the_new_key(
    session_factory, engine, tenant, apns_service, fcm_service, settings: Settings, keys
):
    before = seed(session_factory, tenant, apns_service, fcm_service, settings)
    old, new = Fernet(keys["A"]), Fernet(keys["B"])
    stored = raw_ciphertexts(engine)
    assert len(stored) == 5 and all(old.decrypt(value.encode()) for value in stored)

    # Step 2: the new key first, the old one still listed: old values read, new ones are written with B.
    use_keys(settings, keys["B"], keys["A"])
    assert read_tokens(session_factory) == before["tokens"]
    # Step 3: rotate-keys.
    report = rotate_with_cli(settings, keys["B"], keys["A"])
    assert report["reencrypted"] == {"apps.vapid_private_key": 1, "apps.apns_private_key": 1,
                                     "apps.fcm_service_account": 1, "devices.token": 2,
                                     # this app has no outcome webhook: its secrets are reported, none to move
                                     "webhook_endpoints.secret": 0, "webhook_endpoints.previous_secret": 0}
    assert report["rehashed_devices"] == 0
    for value in raw_ciphertexts(engine):
        new.decrypt(value.encode())
        with pytest.raises(InvalidToken):
            old.decrypt(value.encode())
    # Again: nothing left to do.
    assert set(rotate_with_cli(settings, keys["B"], keys["A"])["reencrypted"].values()) == {0}

    # Step 4: the old key dropped; everything still reads through the ORM.
    use_keys(settings, keys["B"])
    assert read_app(session_factory, tenant.id) == before["app"]
    assert read_tokens(session_factory) == before["tokens"]
    # ...and the old key alone no longer can.
    use_keys(settings, keys["A"])
    with pytest.raises(crypto.UndecryptableValue):
        read_app(session_factory, tenant.id)
    with pytest.raises(crypto.UndecryptableValue):
        read_tokens(session_factory)


def test_rotate_keys_fails_clearly_when_a_needed_key_was_dropped(
    session_factory, tenant, apns_service, fcm_service, settings: Settings, keys
):
    seed(session_factory, tenant, apns_service, fcm_service, settings)
    env = {**TEST_ENV, "PUSHQ_ENCRYPTION_KEYS": keys["B"]}
    result = CliRunner().invoke(main, ["rotate-keys"], env=env)
    assert result.exit_code == 1
    assert "cannot be decrypted with any key in PUSHQ_ENCRYPTION_KEYS" in result.output
    assert keys["A"] not in result.output and keys["B"] not in result.output


def test_rotate_keys_encrypts_data_stored_before_encryption_at_rest(session_factory, engine, settings: Settings):
    """A database written by an earlier pushq: plaintext columns and unkeyed sha256 token hashes."""
    app_id, device_id, user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    vapid = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"
    token = ios_token()
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO apps (id, name, vapid_private_key, vapid_public_key, vapid_subject, apns_use_sandbox, "
                 "created_at, updated_at) VALUES (:id, 'legacy', :vapid, 'pub', 'mailto:a@example.com', false, now(), now())"),
            {"id": app_id, "vapid": vapid},
        )
        connection.execute(
            text("INSERT INTO devices (id, app_id, user_id, platform, token, token_hash, created_at, last_seen_at) "
                 "VALUES (:id, :app_id, :user_id, 'ios', :token, :hash, now(), now())"),
            {"id": device_id, "app_id": app_id, "user_id": user, "token": token,
             "hash": hashlib.sha256(token.encode()).hexdigest()},
        )
    report = rotate_with_cli(settings, *settings.encryption_keys)
    assert report["encrypted_plaintext"]["apps.vapid_private_key"] == 1
    assert report["encrypted_plaintext"]["devices.token"] == 1
    assert report["rehashed_devices"] == 1
    assert vapid.splitlines()[1] not in json.dumps(every_cell(engine)) and token not in json.dumps(every_cell(engine))
    assert read_app(session_factory, app_id)[0] == vapid
    with session_scope(session_factory) as session:
        enroll(session, app_id, [user])
        again = register_device(session, app_id=app_id, user_id=user, platform="ios", push_token=token)
    assert (again.device_id, again.created) == (device_id, False)  # found again by its new keyed hash


def test_a_new_token_hash_key_is_applied_by_rotate_keys(session_factory, settings: Settings, tenant, keys):
    """Devices are re-hashed; one re-registered meanwhile (a second row) wins, the stale row is disabled."""
    user = uuid.uuid4()
    tenant.enroll(user)
    kept, duplicated = ios_token(), ios_token()
    with session_scope(session_factory) as session:
        kept_id = register_device(session, app_id=tenant.id, user_id=user, platform="ios", push_token=kept).device_id
        stale_id = register_device(session, app_id=tenant.id, user_id=user, platform="ios", push_token=duplicated).device_id
    new_hash_key = "a-new-token-hash-key-with-32-bytes-or-more"
    crypto.configure(settings.replace(token_hash_key=new_hash_key))
    with session_scope(session_factory) as session:  # registered under the new key before rotate-keys ran
        fresh_id = register_device(session, app_id=tenant.id, user_id=user, platform="ios", push_token=duplicated).device_id
    assert fresh_id != stale_id

    env = {**TEST_ENV, "PUSHQ_TOKEN_HASH_KEY": new_hash_key}
    result = CliRunner().invoke(main, ["rotate-keys"], env=env, catch_exceptions=False)
    report = json.loads(result.stdout)
    assert (report["rehashed_devices"], report["duplicate_devices_disabled"]) == (1, 1)
    with session_scope(session_factory) as session:
        assert register_device(session, app_id=tenant.id, user_id=user, platform="ios", push_token=kept).device_id == kept_id
        assert register_device(session, app_id=tenant.id, user_id=user, platform="ios", push_token=duplicated).device_id == fresh_id
        stale = session.get(Device, stale_id)
        assert stale.disabled_at is not None and "duplicate" in stale.disabled_reason


def test_rotate_keys_help_explains_the_procedure():
    result = CliRunner().invoke(main, ["rotate-keys", "--help"])
    assert result.exit_code == 0
    text_ = " ".join(result.output.split())
    for step in ("Put it first and keep the old keys after it: PUSHQ_ENCRYPTION_KEYS=NEW,OLD",
                 "Run `pushq rotate-keys`", "Drop the old keys (PUSHQ_ENCRYPTION_KEYS=NEW)"):
        assert step in text_
    assert "rotate-keys" in CliRunner().invoke(main, ["--help"]).output


# -- dedupe on the keyed hash ------------------------------------------------------------------


def test_re_registration_finds_the_same_device_by_its_keyed_hash(client, tenant, push_service, session_factory, settings):
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription()
    ios, android = ios_token(), android_token()
    ids = {}
    for attempt in range(2):
        refreshed = {**subscription, "keys": push_service.new_subscription()["keys"]} if attempt else subscription
        for platform, token in [("web", json.dumps(refreshed)), ("ios", ios.upper() if attempt else ios), ("android", android)]:
            response = client.post("/push/devices/register", headers=tenant.user_headers(user),
                                   json={"app_id": str(tenant.id), "platform": platform, "push_token": token})
            assert response.status_code == 201, response.get_data(as_text=True)
            device_id = response.get_json()["device_id"]
            assert ids.setdefault(platform, device_id) == device_id
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Device)) == 3
        hashes = {d.platform: d.token_hash for d in session.scalars(select(Device))}
    assert hashes == {"web": crypto.token_hash(subscription["endpoint"]), "ios": crypto.token_hash(ios),
                      "android": crypto.token_hash(android)}
    assert hashes["ios"] != hashlib.sha256(ios.encode()).hexdigest()
    other = crypto.Keyring(settings.encryption_keys, "a-different-token-hash-key-0123456789")
    assert other.token_hash(ios) != hashes["ios"]
    assert canonical_token("ios", ios)[1] == hashes["ios"]


# -- development keys -----------------------------------------------------------------------------


def test_cli_generates_development_keys_once(tmp_path, monkeypatch: pytest.MonkeyPatch, settings: Settings):
    monkeypatch.chdir(tmp_path)
    for name in ("PUSHQ_ENCRYPTION_KEYS", "PUSHQ_TOKEN_HASH_KEY", "JWT_SECRET", "JWT_PUBLIC_KEY", "JWT_JWKS_URL"):
        monkeypatch.delenv(name, raising=False)
    first = load_settings()
    crypto.Keyring(first.encryption_keys, first.token_hash_key)  # valid keys
    assert load_settings().encryption_keys == first.encryption_keys
    assert load_settings().token_hash_key == first.token_hash_key
    for name in ("encryption-key", "token-hash-key"):
        assert stat.S_IMODE(os.stat(tmp_path / "var" / name).st_mode) == 0o600
    monkeypatch.setenv("PUSHQ_ENCRYPTION_KEYS", settings.encryption_keys[0])
    assert load_settings().encryption_keys == settings.encryption_keys  # configured keys win


# -- logs -------------------------------------------------------------------------------------------

# Loggers of the local vendor stand-ins (and the HTTP/2 library their APNs server runs on),
# which live in the test process: what a stand-in logs is not pushq's log.
STANDIN_LOGGERS = ("standins", "hpack", "h2")


def test_logs_never_show_tokens_keys_or_jwts(
    api, worker, tenant, push_service, apns_service, fcm_service, session_factory, settings: Settings, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    jwts: list[str] = []
    for name in ("service_headers", "user_headers"):
        mint = getattr(tenant, name)

        def recording(*args, _mint=mint, **kwargs):
            headers = _mint(*args, **kwargs)
            jwts.append(headers["Authorization"].removeprefix("Bearer "))
            return headers

        monkeypatch.setattr(tenant, name, recording)

    user, subscription, ios, android = devices_on_three_platforms(api, tenant, push_service, apns_service, fcm_service)
    sent = api.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"}, headers=tenant.service_headers())
    assert sent.status_code == 200, sent.text
    notification = final_notification(api, tenant, sent.json()["notification_id"])
    assert notification["status"] == "delivered", notification
    assert {d["status"] for d in notification["deliveries"]} == {"sent"} and len(notification["deliveries"]) == 3
    # Rejected tokens are logged (why), never the token itself.
    bad = jwts[-1][:-4] + ("AAAA" if not jwts[-1].endswith("AAAA") else "BBBB")
    rejected = api.get(f"/push/notifications/{sent.json()['notification_id']}", headers={"Authorization": f"Bearer {bad}"})
    assert rejected.status_code == 401
    jwts.append(bad)

    found = Secrets()
    found.add_subscription("web subscription", subscription)
    found.add("APNs device token", ios)
    found.add("FCM registration token", android)
    found.add_app_credentials(session_factory, tenant.id)
    for index, jwt in enumerate(jwts):
        found.add(f"JWT {index}", jwt)
        found.add(f"JWT {index} signature", jwt.rsplit(".", 1)[1])
    found.add("JWT_SECRET", settings.jwt_secret)
    found.add("encryption key", settings.encryption_keys[0])
    found.add("token hash key", settings.token_hash_key)

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    ours = [record for record in caplog.records if not record.name.startswith(STANDIN_LOGGERS)]
    assert ours, "nothing captured: the check would prove nothing"
    captured = "\n".join(formatter.format(record) for record in ours)
    worker_log = worker.log_path.read_text()
    assert "pushq.deliver" in worker_log
    assert leaks(captured, found.needles) == []
    assert leaks(worker_log, found.needles) == []
