"""The core scenario through a PgBouncer in transaction pooling (Debian's ``pgbouncer``, started here).

The worker (prefork, embedded beat: sweeps, retries, housekeeping), the API and the test's own
writes reach PostgreSQL only through PgBouncer, whose pool has fewer server connections than
there are clients, so consecutive transactions of one client land on different server
connections: anything pushq kept in a session (an advisory lock, LISTEN, a prepared statement, a
temporary table, a SET) would be lost or leak to another client, and these sends would fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.engine import make_url

from api.app import create_app
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from tests.support import pgbouncer
from tests.support.flows import bulk_and_check_every_device, send_one_and_check_delivery
from tests.support.harness import TEST_ENV, LiveServer, Tenant, own_database_scope, own_redis, start_worker


@dataclass
class Pooled:
    api: httpx.Client
    tenant: Tenant
    bouncer: pgbouncer.PgBouncer


@pytest.fixture(scope="module")
def pooled(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pooled]:
    assert pgbouncer.available(), "pgbouncer is not installed (Debian package pgbouncer; make provision installs it)"
    workdir = tmp_path_factory.mktemp("pgbouncer")
    with own_database_scope("pgbouncer") as direct_url, own_redis(workdir / "redis") as redis_url:
        bouncer = pgbouncer.PgBouncer(direct_url, workdir / "bouncer").start()
        database_url = bouncer.url(direct_url)
        pooled_settings = settings.replace(database_url=database_url, redis_url=redis_url)
        env = {**TEST_ENV, "PYTHONWARNINGS": "ignore", "DATABASE_URL": database_url, "REDIS_URL": redis_url}
        worker = start_worker({**os.environ, **env}, workdir / "worker.log", workdir / "schedule")
        engine = make_engine(database_url)
        server = LiveServer(create_app(pooled_settings)).start()
        try:
            with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as http:
                yield Pooled(http, Tenant(pooled_settings, make_session_factory(engine)), bouncer)
        finally:
            server.stop()
            worker.terminate()
            worker.wait(timeout=20)
            worker.log_file.close()  # type: ignore[attr-defined]
            engine.dispose()
            bouncer.stop()


def test_send_through_pgbouncer_is_delivered_and_recorded(pooled: Pooled, push_service) -> None:
    send_one_and_check_delivery(pooled.api, pooled.tenant, push_service)


def test_bulk_through_pgbouncer_reaches_every_device(pooled: Pooled, push_service) -> None:
    bulk_and_check_every_device(pooled.api, pooled.tenant, push_service, users=20)
    database = make_url(pooled.tenant.settings.database_url).database
    transactions, servers = pooled.bouncer.served(database)
    assert transactions > 100  # every write and claim of both scenarios went through it
    assert servers <= pgbouncer.SERVER_POOL_SIZE  # on no more server connections than its pool
