"""Egress is checked again in the worker: a stored endpoint the rules now refuse is never contacted.

A worker runs with production egress settings (no http, no loopback) next to a
device whose endpoint was stored before the rules (written straight into the
database, as a row from an older release would be). The push ends ``rejected``,
the device is disabled, and the listener behind the endpoint sees no connection.
"""

from __future__ import annotations

import json
import os
import socket
import uuid

import redis
from sqlalchemy import insert, select

from api.app import create_app
from shared import crypto
from shared.db import session_scope
from shared.models import Delivery, Device, Notification
from tests.support.harness import TEST_ENV, start_worker
from tests.support.helpers import wait_for


def test_a_device_stored_with_a_now_refused_endpoint_is_rejected_and_never_contacted(
    settings, tenant, session_factory, tmp_path
):
    strict_redis = os.environ.get("TEST_EGRESS_REDIS_URL", "redis://127.0.0.1:6379/8")
    redis.Redis.from_url(strict_redis).flushdb()
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

    env = {**os.environ, **TEST_ENV, "PYTHONWARNINGS": "ignore", "REDIS_URL": strict_redis,
           "PUSHQ_ALLOW_HTTP_ENDPOINTS": "0"}
    worker = start_worker(env, tmp_path / "worker.log", tmp_path / "schedule")
    try:
        client = create_app(settings.replace(redis_url=strict_redis)).test_client()
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
