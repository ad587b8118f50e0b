"""Guards: daily quota, registration rate limit, idempotent sends (real Redis, real PostgreSQL)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from api.app import create_app
from shared.db import session_scope
from shared.guards import DailyQuota, QuotaExceeded, QuotaPolicy
from shared.models import App, Notification
from shared.services.sends import SendRequest, create_notifications
from tests.support.flows import final_notification, register_web
from tests.support.harness import ROOT, TEST_ENV
from tests.support.helpers import wait_for


def set_quota(session_factory, app_id, quota: int) -> None:
    with session_scope(session_factory) as session:
        session.get(App, app_id).daily_quota = quota


def notification_count(session_factory) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(Notification))


def quota_used(redis_client, app_id) -> int:
    return int(redis_client.get(f"pushq:quota:{app_id}:{datetime.now(UTC):%Y-%m-%d}") or 0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def two_api_processes(engine, tmp_path):
    """Two independent gunicorn servers (2 worker processes each) on the test database and Redis."""
    env = {**os.environ, **TEST_ENV, "PYTHONWARNINGS": "ignore"}
    servers, logs = [], []
    try:
        for index in range(2):
            port = free_port()
            log = open(tmp_path / f"api{index}.log", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "2",
                 "--threads", "4", "api.wsgi:app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
            servers.append((process, f"http://127.0.0.1:{port}"))
        for _process, url in servers:
            def up(url=url):
                try:
                    return httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200
                except httpx.HTTPError:
                    return False

            # Start-up, not speed: a loaded 2-core machine can take well over 30 s to boot four workers.
            wait_for(up, timeout=120, interval=0.2)
        yield [url for _, url in servers]
    finally:  # also when start-up failed: no process or open log file outlives the test
        for process, _ in servers:
            process.terminate()
        for process, _ in servers:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def test_concurrent_bulk_sends_never_overshoot_the_quota_across_processes(
    two_api_processes, tenant, session_factory, redis_client
):
    users = [uuid.uuid4() for _ in range(100)]
    tenant.enroll(*users)
    set_quota(session_factory, tenant.id, 1000)
    body = {"user_ids": [str(u) for u in users], "title": "Gym closes early", "body": "At 6pm."}
    headers = tenant.service_headers()

    def bulk(index: int) -> int:
        url = two_api_processes[index % 2]
        with httpx.Client(trust_env=False, timeout=30) as http:
            return http.post(f"{url}/push/send/bulk", json=body, headers=headers).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(bulk, range(20)))

    assert sorted(statuses) == [200] * 10 + [429] * 10
    assert notification_count(session_factory) == 1000
    assert quota_used(redis_client, tenant.id) == 1000


def test_quota_exceeded_response_shape_and_headers(client, tenant, session_factory, redis_client):
    user = uuid.uuid4()
    tenant.enroll(user)
    set_quota(session_factory, tenant.id, 2)
    send = {"user_id": str(user), "title": "t", "body": "b"}
    first = client.post("/push/send", json=send, headers=tenant.service_headers())
    assert (first.status_code, first.headers["X-Quota-Limit"], first.headers["X-Quota-Remaining"]) == (200, "2", "1")
    bulk = client.post("/push/send/bulk", json={"user_ids": [str(user), str(uuid.uuid4())], "title": "t", "body": "b"},
                       headers=tenant.service_headers())
    # One user is not enrolled: refused whole (400) before the quota is even consulted, so nothing is taken.
    assert (bulk.status_code, bulk.json["error"]) == (400, "user_not_enrolled")
    assert client.post("/push/send", json=send, headers=tenant.service_headers()).headers["X-Quota-Remaining"] == "0"

    refused = client.post("/push/send", json=send, headers=tenant.service_headers())

    assert refused.status_code == 429
    assert refused.json == {"error": "daily_quota_exceeded", "message": "Daily quota exceeded"}
    now = datetime.now(UTC)
    to_midnight = 86400 - (now.hour * 3600 + now.minute * 60 + now.second)
    assert abs(int(refused.headers["Retry-After"]) - to_midnight) <= 2
    assert refused.headers["X-Quota-Remaining"] == "0"
    assert refused.headers["X-Quota-Limit"] == "2"
    assert notification_count(session_factory) == 2


def test_a_bulk_that_would_cross_the_quota_is_refused_whole(client, tenant, session_factory, redis_client):
    users = [uuid.uuid4() for _ in range(5)]
    tenant.enroll(*users)
    set_quota(session_factory, tenant.id, 4)
    response = client.post("/push/send/bulk", json={"user_ids": [str(u) for u in users], "title": "t", "body": "b"},
                           headers=tenant.service_headers())
    assert response.status_code == 429
    assert notification_count(session_factory) == 0
    assert quota_used(redis_client, tenant.id) == 0


def test_refused_requests_take_no_quota(client, tenant, session_factory, redis_client):
    set_quota(session_factory, tenant.id, 5)
    not_enrolled = {"user_id": str(uuid.uuid4()), "title": "t", "body": "b"}
    assert client.post("/push/send", json=not_enrolled, headers=tenant.service_headers()).status_code == 400
    assert client.post("/push/send", json=not_enrolled).status_code == 401
    assert client.post("/push/send", json={"title": 5}, headers=tenant.service_headers()).status_code == 400
    assert quota_used(redis_client, tenant.id) == 0


def test_a_transaction_that_does_not_commit_gives_its_quota_back(tenant, session_factory, redis_client):
    user = uuid.uuid4()
    tenant.enroll(user)
    policy = QuotaPolicy(DailyQuota(redis_client), default_limit=1)
    session = session_factory()
    try:
        create_notifications(session, tenant.id, [SendRequest(user_id=user, title="t", body="b")],
                             default_ttl=60, enqueue=lambda ids: None, quota=policy)
        assert quota_used(redis_client, tenant.id) == 1
        session.rollback()  # e.g. the commit failed: the database went away
    finally:
        session.close()
    assert quota_used(redis_client, tenant.id) == 0
    with session_scope(session_factory) as session:  # the quota is usable again
        create_notifications(session, tenant.id, [SendRequest(user_id=user, title="t", body="b")],
                             default_ttl=60, enqueue=lambda ids: None, quota=policy)
    with pytest.raises(QuotaExceeded), session_scope(session_factory) as session:
        create_notifications(session, tenant.id, [SendRequest(user_id=user, title="t", body="b")],
                             default_ttl=60, enqueue=lambda ids: None, quota=policy)


def register(client, tenant, user, index: int):
    return client.post(
        "/push/devices/register",
        json={"app_id": str(tenant.id), "platform": "ios", "push_token": f"{index:064x}"},
        headers=tenant.user_headers(user),
    )


def test_the_eleventh_registration_in_an_hour_is_429(client, tenant, redis_client):
    user, another_user = uuid.uuid4(), uuid.uuid4()
    tenant.enroll(user, another_user)
    for index in range(10):
        assert register(client, tenant, user, index % 3).status_code == 201  # re-registrations count too
    refused = register(client, tenant, user, 99)
    assert refused.status_code == 429
    assert refused.json == {"error": "rate_limited", "message": "Too many registrations, try again later"}
    assert 3590 <= int(refused.headers["Retry-After"]) <= 3600
    assert register(client, tenant, another_user, 99).status_code == 201  # per user


def test_the_registration_limit_resets_after_its_window(settings, database, tenant, redis_client):
    short_window = create_app(settings.replace(registration_window_seconds=4)).test_client()
    user = uuid.uuid4()
    tenant.enroll(user)
    for index in range(10):
        assert register(short_window, tenant, user, index).status_code == 201
    refused = register(short_window, tenant, user, 10)
    assert refused.status_code == 429
    # The window's end is the event: registering again succeeds once it has passed (refusals meanwhile
    # do not count), within a margin a loaded machine keeps.
    wait_for(lambda: register(short_window, tenant, user, 10).status_code == 201,
             timeout=int(refused.headers["Retry-After"]) + 30, interval=0.5, what="the window to pass")


def test_an_idempotent_replay_returns_the_same_ids_and_sends_once(api, worker, tenant, push_service, session_factory):
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription()
    register_web(api, tenant, user, subscription)
    headers = {**tenant.service_headers(), "Idempotency-Key": "order-1234-shipped"}
    body = {"user_ids": [str(user)], "title": "Shipped", "body": "On its way."}

    first = api.post("/push/send/bulk", json=body, headers=headers)
    second = api.post("/push/send/bulk", json=body, headers=headers)

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    final_notification(api, tenant, first.json()["notification_ids"][0])
    assert len(push_service.messages(subscription)) == 1
    assert notification_count(session_factory) == 1

    changed = api.post("/push/send/bulk", json={**body, "title": "Delivered"}, headers=headers)
    assert changed.status_code == 422
    assert changed.json()["error"] == "idempotency_key_reused"


def test_racing_requests_with_one_key_send_once(live_server, tenant, session_factory, engine):
    user = uuid.uuid4()
    tenant.enroll(user)
    for round_number in range(5):
        headers = {**tenant.service_headers(), "Idempotency-Key": f"race-{round_number}"}
        barrier = threading.Barrier(2)

        def post(_):
            with httpx.Client(base_url=live_server.url, trust_env=False, timeout=30) as http:
                barrier.wait()
                return http.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"}, headers=headers)

        with ThreadPoolExecutor(max_workers=2) as pool:
            responses = list(pool.map(post, range(2)))
        assert [r.status_code for r in responses] == [200, 200]
        assert responses[0].json() == responses[1].json()
    assert notification_count(session_factory) == 5


def test_idempotency_keys_are_per_app(client, tenant, other_tenant):
    user = uuid.uuid4()
    tenant.enroll(user)
    other_tenant.enroll(user)
    body = {"user_id": str(user), "title": "t", "body": "b"}
    mine = client.post("/push/send", json=body, headers={**tenant.service_headers(), "Idempotency-Key": "k"})
    theirs = client.post("/push/send", json=body, headers={**other_tenant.service_headers(), "Idempotency-Key": "k"})
    assert mine.status_code == theirs.status_code == 200
    assert mine.json != theirs.json


def test_a_refused_send_does_not_burn_its_key(client, tenant):
    user = uuid.uuid4()
    headers = {**tenant.service_headers(), "Idempotency-Key": "retry-me"}
    body = {"user_id": str(user), "title": "t", "body": "b"}
    assert client.post("/push/send", json=body, headers=headers).status_code == 400  # not enrolled yet
    tenant.enroll(user)
    assert client.post("/push/send", json=body, headers=headers).status_code == 200


def test_idempotency_key_must_be_sane(client, tenant):
    user = uuid.uuid4()
    tenant.enroll(user)
    response = client.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"},
                           headers={**tenant.service_headers(), "Idempotency-Key": "x" * 256})
    assert (response.status_code, response.json["error"]) == (400, "invalid_idempotency_key")
