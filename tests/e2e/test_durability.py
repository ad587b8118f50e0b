"""Nothing accepted is lost: not when the broker is unreachable at enqueue, not when a worker is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import uuid

import httpx
from sqlalchemy import select, text

from api.app import create_app
from shared.db import run_in_transaction
from shared.models import Delivery, Notification
from tests.support.flows import final_notification, register_web
from tests.support.harness import LiveServer, start_worker
from tests.support.helpers import wait_for


def test_a_send_accepted_while_the_broker_is_down_is_delivered(settings, api, worker, tenant, push_service):
    """A send needs no broker at accept: its row is the outbox entry, and the workers' pump fans it out."""
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription()
    register_web(api, tenant, user, subscription)
    # An API whose broker is unreachable (nothing listens on port 1): same database and guard store.
    broker_down = LiveServer(create_app(settings.replace(broker_url="redis://127.0.0.1:1/0"))).start()
    try:
        with httpx.Client(base_url=broker_down.url, trust_env=False, timeout=30) as http:
            response = http.post("/push/send", json={"user_id": str(user), "title": "Still here", "body": "b"},
                                 headers=tenant.service_headers())
    finally:
        broker_down.stop()

    assert response.status_code == 200  # committed: accepted whatever the broker
    notification = final_notification(api, tenant, response.json()["notification_id"])
    assert notification["status"] == "delivered"
    assert [m.json()["title"] for m in push_service.messages(subscription)] == ["Still here"]


def test_without_redis_the_api_refuses_with_503_rather_than_guess_the_quota(settings, tenant):
    user = uuid.uuid4()
    tenant.enroll(user)
    client = create_app(settings.replace(redis_url="redis://127.0.0.1:1/0")).test_client()
    response = client.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"},
                           headers=tenant.service_headers())
    assert response.status_code == 503
    assert response.get_json() == {"error": "unavailable", "message": "Service temporarily unavailable, try again"}
    assert response.headers["Retry-After"] == "5"


def test_a_worker_sigkilled_mid_push_loses_nothing(own_services, push_service, tmp_path):
    """Kill -9 the whole worker while it waits on the push service; a new worker finishes the delivery.

    The claim's lease (4 s here) runs out, the scheduler's sweep makes the delivery
    due again, and the new worker pushes it: at least once, never lost. The workers have
    a database and a Redis of their own, so the suite's worker cannot be the one that
    finishes the delivery (its sweep would find the expired lease too).
    """
    # A short lease, still longer than a chunk's hard time limit (2 x 1 s push deadline + 1 s).
    env = own_services.env(PUSHQ_CLAIM_LEASE_SECONDS="4", PUSHQ_PUSH_DEADLINE_SECONDS="1",
                           PUSHQ_DELIVERY_CHUNK_SIZE="1", PUSHQ_PUSH_CONCURRENCY="1")
    session_factory = own_services.session_factory
    tenant = own_services.tenant()
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription()
    push_service.set_behavior(subscription, 201, delay=10, times=1)  # the first push hangs
    client = create_app(own_services.settings).test_client()
    registered = client.post("/push/devices/register", json={"app_id": str(tenant.id), "platform": "web",
                                                             "push_token": json.dumps(subscription)},
                             headers=tenant.user_headers(user))
    assert registered.status_code == 201, registered.get_json()

    first = start_worker(env, tmp_path / "first.log", tmp_path / "first.schedule")
    try:
        notification_id = client.post("/push/send", json={"user_id": str(user), "title": "Survives", "body": "b"},
                                      headers=tenant.service_headers()).get_json()["notification_id"]
        wait_for(lambda: push_service.attempts(subscription) == 1)  # the worker is inside the push now
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        first.log_file.close()
    with session_factory() as session:
        assert session.scalars(select(Delivery.status)).one() == "sending"  # claimed, never finished

    second = start_worker(env, tmp_path / "second.log", tmp_path / "second.schedule")
    try:
        def delivered():
            with session_factory() as session:
                return session.get(Notification, uuid.UUID(notification_id)).status == "delivered"

        wait_for(delivered, timeout=30)
    finally:
        second.terminate()
        second.wait(timeout=20)
        second.log_file.close()
    with session_factory() as session:
        delivery = session.scalars(select(Delivery)).one()
        assert (delivery.status, delivery.attempts) == ("sent", 2)
    assert push_service.attempts(subscription) == 2
    assert any(m.json()["title"] == "Survives" for m in push_service.messages(subscription))


def test_a_transaction_whose_connection_is_killed_is_run_again(session_factory, tenant):
    """PostgreSQL kills the connection mid-transaction (as on a restart or failover); the work is redone."""
    calls = []

    def work(session):
        calls.append(1)
        if len(calls) == 1:
            session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return session.execute(text("SELECT count(*) FROM apps")).scalar_one()

    assert run_in_transaction(session_factory, work, backoff_seconds=0.05) == 1
    assert len(calls) == 2
