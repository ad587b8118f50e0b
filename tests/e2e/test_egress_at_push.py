"""Egress is checked again in the worker: a stored endpoint the rules now refuse is never contacted.

A worker runs with production egress settings (no http, no loopback) next to a
device whose endpoint was stored before the rules (written straight into the
database, as a row from an older release would be). The push ends ``rejected``,
the device is disabled, and the listener behind the endpoint sees no connection.

The worker has a database and a Redis of its own (``own_services``): the suite's worker,
which allows http endpoints, never sees this device, and this worker never sees the suite's.
"""

from __future__ import annotations

import json
import os
import socket
import uuid

import httpx
import redis
from sqlalchemy import insert, select

from api.app import create_app
from shared import crypto
from shared.db import make_engine, make_session_factory, session_scope
from shared.models import Delivery, Device, Notification
from tests.support.harness import TEST_ENV, Tenant, own_database, start_worker
from tests.support.helpers import wait_for


def test_a_device_stored_with_a_now_refused_endpoint_is_rejected_and_never_contacted(own_services, tmp_path):
    session_factory = own_services.session_factory
    tenant = own_services.tenant()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}/push/{uuid.uuid4()}"
    user = uuid.uuid4()
    tenant.enroll(user)
    token = json.dumps({"endpoint": endpoint, "keys": {"p256dh": "BPl" + "A" * 84, "auth": "A" * 22}})
    with session_scope(session_factory) as session:
        device_id = uuid.uuid4()
        session.execute(insert(Device), [{"id": device_id, "app_id": tenant.id, "user_id": user, "platform": "web",
                                          "token": token, "token_hash": crypto.token_hash(endpoint)}])

    worker = start_worker(own_services.env(PUSHQ_ALLOW_HTTP_ENDPOINTS="0"), tmp_path / "worker.log",
                          tmp_path / "schedule")
    try:
        client = create_app(own_services.settings).test_client()
        response = client.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"},
                               headers=tenant.service_headers())
        assert response.status_code == 200
        notification_id = uuid.UUID(response.get_json()["notification_id"])

        def final():
            with session_scope(session_factory) as session:
                status = session.get(Notification, notification_id).status
                return status if status not in ("queued", "sending") else None

        assert wait_for(final, timeout=30) == "failed"
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        worker.log_file.close()
    with session_scope(session_factory) as session:
        delivery = session.scalars(select(Delivery)).one()
        assert delivery.status == "rejected"
        assert delivery.last_error == "endpoint refused by the egress rules: endpoint must be an https URL"
        device = session.get(Device, device_id)
        assert device.disabled_at is not None
    try:
        connection, _ = listener.accept()
    except TimeoutError:
        connection = None
    finally:
        listener.close()
    assert connection is None, "the worker connected to a refused endpoint"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_name_resolving_inside_is_retried_counted_and_never_disables_the_device(settings, push_service, tmp_path):
    """Issue 16 item 13: an allowed push-service name whose DNS answer is a private address (here "localhost",
    added to PUSHQ_WEBPUSH_EXTRA_HOSTS) used to end `rejected` and disable the device, so one resolver fault
    disabled a whole push service's devices. Now each attempt is a retry, counted under reason="egress" on the
    worker's metrics port, and when the attempts are used up the delivery fails with the device still enabled.

    Its own database: the retries wait in the database, where the session's worker (other egress settings)
    would otherwise pick them up."""
    strict_redis = os.environ.get("TEST_EGRESS_REDIS_URL", "redis://127.0.0.1:6379/8")
    redis.Redis.from_url(strict_redis).flushdb()
    database_url = own_database("egress")
    engine = make_engine(database_url)
    session_factory = make_session_factory(engine)
    strict = settings.replace(database_url=database_url, redis_url=strict_redis, allow_http_endpoints=False,
                              webpush_extra_hosts=("localhost",))
    tenant = Tenant(strict, session_factory)
    client = create_app(strict).test_client()
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = {**push_service.new_subscription(), "endpoint": f"https://localhost/push/{uuid.uuid4()}"}
    registered = client.post("/push/devices/register", headers=tenant.user_headers(user),
                             json={"app_id": str(tenant.id), "platform": "web", "push_token": json.dumps(subscription)})
    assert registered.status_code == 201, registered.get_json()  # the rules admit the name; only its address is refused
    device_id = uuid.UUID(registered.get_json()["device_id"])

    metrics_port = _free_port()
    env = {**os.environ, **TEST_ENV, "PYTHONWARNINGS": "ignore", "REDIS_URL": strict_redis,
           "DATABASE_URL": database_url, "PUSHQ_ALLOW_HTTP_ENDPOINTS": "0", "PUSHQ_WEBPUSH_EXTRA_HOSTS": "localhost",
           "PUSHQ_METRICS_DIR": str(tmp_path / "metrics"), "PUSHQ_WORKER_METRICS_PORT": str(metrics_port)}
    worker = start_worker(env, tmp_path / "worker.log", tmp_path / "schedule")
    try:
        response = client.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"},
                               headers=tenant.service_headers())
        assert response.status_code == 200
        notification_id = uuid.UUID(response.get_json()["notification_id"])

        def final():
            with session_scope(session_factory) as session:
                status = session.get(Notification, notification_id).status
                return status if status not in ("queued", "sending") else None

        assert wait_for(final, timeout=30) == "failed"
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5, trust_env=False).text
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        worker.log_file.close()
    attempts = int(TEST_ENV["PUSHQ_MAX_ATTEMPTS"])
    with session_scope(session_factory) as session:
        delivery = session.scalars(select(Delivery)).one()
        assert (delivery.status, delivery.attempts) == ("failed", attempts)
        assert delivery.last_error == (f"gave up after {attempts} attempts: "
                                       "egress refused at connect: the push service host resolved to no public address")
        device = session.get(Device, device_id)
        assert (device.disabled_at, device.disabled_reason) == (None, None)
    engine.dispose()
    retries = [line for line in scraped.splitlines()
               if line.startswith("pushq_delivery_retries_total{") and 'reason="egress"' in line]
    assert len(retries) == 1 and float(retries[0].rsplit(" ", 1)[1]) == attempts, scraped
