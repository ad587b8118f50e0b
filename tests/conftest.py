"""Fixtures: real PostgreSQL, real Redis, a real Celery worker process, real HTTP.

* The database is built once per session with ``alembic upgrade head`` and
  every table is truncated before each test.
* The worker is ``celery -A workers.main worker -B`` in a subprocess, configured
  through the environment exactly like production, with the scheduler embedded
  so retries and the sweeper run.
* The API is served by a real HTTP server on a loopback port.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import httpx
import pytest
import redis
from sqlalchemy import text

from api.app import create_app
from shared import crypto
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from shared.schema import migrate
from standins.apns import ApnsStandin
from standins.fcm import FcmStandin
from standins.webpush import WebPushStandin
from tests.support.harness import (
    ROOT,
    TEST_ENV,
    LiveServer,
    OwnServices,
    Tenant,
    own_database_scope,
    own_redis,
    start_worker,
    truncate_all,
)


@pytest.fixture(scope="session", autouse=True)
def settings() -> Settings:
    """The test settings; also installs the encryption keyring in this process (every test, as
    anything touching a device token or app credentials encrypts, decrypts or hashes)."""
    settings = Settings.from_env(TEST_ENV)
    crypto.configure(settings)
    return settings


@pytest.fixture(scope="session")
def database(settings: Settings) -> Iterator[None]:
    engine = make_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    migrate(settings.database_url)
    return


@pytest.fixture(scope="session")
def engine(settings: Settings, database: None):
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def session_factory(engine):
    return make_session_factory(engine)


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Truncate every table (and empty the test Redis db) before each test that uses them."""
    uses_state = {"engine", "api", "client", "redis_client", "worker"} & set(request.fixturenames)
    if uses_state:
        truncate_all(request.getfixturevalue("engine"))
        # Quota counters, rate-limit windows and leftover tasks of the previous test.
        request.getfixturevalue("redis_client").flushdb()
    return


@pytest.fixture(scope="session")
def flask_app(settings: Settings, database: None):
    return create_app(settings)


@pytest.fixture
def client(flask_app):
    """Flask's test client: the whole WSGI stack, without a socket (for validation tests)."""
    return flask_app.test_client()


@pytest.fixture(scope="session")
def live_server(flask_app) -> Iterator[LiveServer]:
    server = LiveServer(flask_app).start()
    yield server
    server.stop()


@pytest.fixture
def api(live_server: LiveServer, engine) -> Iterator[httpx.Client]:
    """An HTTP client against the API served on a real socket."""
    with httpx.Client(base_url=live_server.url, timeout=10, trust_env=False) as http:
        yield http


@pytest.fixture(scope="session")
def apns_standin() -> Iterator[ApnsStandin]:
    with ApnsStandin() as service:
        yield service


@pytest.fixture
def apns_service(apns_standin: ApnsStandin) -> ApnsStandin:
    apns_standin.reset()
    return apns_standin


@pytest.fixture(scope="session")
def fcm_standin() -> Iterator[FcmStandin]:
    with FcmStandin() as service:
        yield service


@pytest.fixture
def fcm_service(fcm_standin: FcmStandin) -> FcmStandin:
    fcm_standin.reset()
    return fcm_standin


@pytest.fixture(scope="session")
def worker_process(
    database: None, tmp_path_factory: pytest.TempPathFactory, apns_standin: ApnsStandin, fcm_standin: FcmStandin
) -> Iterator[subprocess.Popen]:
    """A real Celery worker (prefork) with an embedded beat, consuming every queue.

    Its vendor endpoints point at the stand-ins, exactly as an operator would
    configure them through the environment.
    """
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {
        **os.environ,
        **TEST_ENV,
        "PYTHONWARNINGS": "ignore",
        "PUSHQ_APNS_HOST": apns_standin.host,
        "PUSHQ_APNS_PORT": str(apns_standin.port),
        "PUSHQ_APNS_CA_FILE": str(apns_standin.certificate.ca_path),
        "PUSHQ_FCM_BASE_URL": fcm_standin.base_url,
    }
    process = start_worker(env, log_path, tmp_path_factory.mktemp("beat") / "schedule")
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.log_file.close()  # type: ignore[attr-defined]


@pytest.fixture
def worker(worker_process: subprocess.Popen, redis_client) -> subprocess.Popen:
    if worker_process.poll() is not None:
        raise RuntimeError(f"worker died:\n{worker_process.log_path.read_text()[-4000:]}")  # type: ignore[attr-defined]
    return worker_process


@pytest.fixture(scope="session")
def webpush_service() -> Iterator[WebPushStandin]:
    with WebPushStandin() as service:
        yield service


@pytest.fixture
def push_service(webpush_service: WebPushStandin) -> WebPushStandin:
    webpush_service.reset()
    return webpush_service


@pytest.fixture
def own_services(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServices]:
    """A database and a Redis server of the test's own, for a test that runs workers of its own: the
    session worker never sees their rows or tasks, and no test depends on another's timing."""
    with own_database_scope("own") as database_url, own_redis(tmp_path_factory.mktemp("own-redis")) as redis_url:
        services = OwnServices(settings, database_url, redis_url)
        try:
            yield services
        finally:
            services.engine.dispose()


@pytest.fixture
def tenant(settings: Settings, session_factory) -> Tenant:
    return Tenant(settings, session_factory)


@pytest.fixture
def other_tenant(settings: Settings, session_factory) -> Tenant:
    return Tenant(settings, session_factory, "other app")


# -- tiers ---------------------------------------------------------------------------------
# tests/unit: no services (rules, schemas, adapters and wire clients against in-process
# stand-ins); tests/integration: PostgreSQL and Redis; tests/e2e: HTTP, worker subprocesses,
# stand-ins. The marker comes from the directory; `make test-fast` runs `-m unit`.
TIERS = ("unit", "integration", "e2e")
SERVICE_FIXTURES = {"database", "engine", "session_factory", "redis_client", "flask_app", "client", "live_server",
                    "api", "worker", "worker_process", "tenant", "other_tenant", "own_services"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(ROOT / "tests").parts
        tier = parts[0] if parts and parts[0] in TIERS else None
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: every test lives in tests/unit, tests/integration or tests/e2e")
        item.add_marker(getattr(pytest.mark, tier))
        used = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        if tier == "unit" and used:
            raise pytest.UsageError(f"{item.nodeid} is in tests/unit but needs {sorted(used)}: move it to integration")
