"""The push deadline (PUSHQ_PUSH_DEADLINE_SECONDS) on APNs and FCM, through real workers (issue 16 item 4).

The Celery time limits of a chunk come from the push deadline; APNs and FCM used to
bound a push by connect + read timeouts instead, so with a short deadline a stalled
push outlived the chunk's soft limit, and every outcome of the chunk (the accepted
pushes' too) was turned into a retry and pushed again.

Each test runs its own redis-server (the broker, so only its own workers take its
tasks) and its own workers without a scheduler: a retry waits for the sweep, so the
chunk's outcomes stay as the chunk wrote them for the test to read. Retries are
scheduled about a day out (PUSHQ_RETRY_BASE_SECONDS) for the same reason.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from api.app import create_app
from broker.queues import ALL_QUEUES, FANOUT_QUEUE, PLATFORM_QUEUES
from tests.support.faults import Proc, RedisServer, wait_until
from tests.support.harness import TEST_ENV, LiveServer, Tenant

STALL_SECONDS = 120.0  # far beyond any deadline here: the stalled push never answers in time


class Stack:
    """This test's redis-server, API (in this process, on a socket) and worker processes."""

    def __init__(self, tmp_path: Path, settings, deadline: float, apns, fcm) -> None:
        self.tmp_path = tmp_path
        self.redis = RedisServer(tmp_path / "redis").start()
        self.env = {
            **os.environ, **TEST_ENV, "PYTHONWARNINGS": "ignore", "REDIS_URL": self.redis.url,
            # The default vendor timeouts (5 + 10 s), longer than the chunk's time limits here.
            "PUSHQ_VENDOR_CONNECT_TIMEOUT": "5", "PUSHQ_VENDOR_READ_TIMEOUT": "10",
            "PUSHQ_PUSH_DEADLINE_SECONDS": str(deadline),
            # One wave per chunk of 100: a chunk's soft time limit is 2 deadlines, its hard limit 3.
            "PUSHQ_DELIVERY_CHUNK_SIZE": "100", "PUSHQ_PUSH_CONCURRENCY": "100",
            "PUSHQ_RETRY_BASE_SECONDS": "86400", "PUSHQ_RETRY_MAX_SECONDS": "86400",
            "PUSHQ_APNS_HOST": apns.host, "PUSHQ_APNS_PORT": str(apns.port),
            "PUSHQ_APNS_CA_FILE": str(apns.certificate.ca_path), "PUSHQ_FCM_BASE_URL": fcm.base_url,
            "PUSHQ_METRICS_DIR": str(tmp_path / "metrics"),
        }
        self.workers: list[Proc] = []
        self.server = LiveServer(create_app(settings.replace(redis_url=self.redis.url))).start()
        self.http = httpx.Client(base_url=self.server.url, timeout=30, trust_env=False)

    def worker(self, queues: tuple[str, ...] = ALL_QUEUES) -> Proc:
        name = f"worker{len(self.workers)}"
        proc = Proc(name, [sys.executable, "-m", "celery", "-A", "workers.main", "worker", "--pool", "prefork",
                           "--concurrency", "2", "-Q", ",".join(queues), "-n", f"{name}@deadline",
                           "--without-gossip", "--without-mingle", "--loglevel", "INFO"], self.env, self.tmp_path)
        self.workers.append(proc)
        wait_until(f"{name} ready", lambda: "ready." in proc.log() or not proc.alive(), 60, detail=proc.tail)
        assert proc.alive(), proc.tail()
        return proc

    def close(self) -> None:
        self.http.close()
        self.server.stop()
        for proc in self.workers:
            proc.stop()
        self.redis.stop()

    def logs(self) -> str:
        return "\n".join(proc.tail() for proc in self.workers)


@pytest.fixture
def stack_factory(tmp_path, settings, engine, apns_service, fcm_service) -> Iterator[Callable[[float], Stack]]:
    made: list[Stack] = []

    def make(deadline: float) -> Stack:
        made.append(Stack(tmp_path, settings, deadline, apns_service, fcm_service))
        return made[-1]

    yield make
    for stack in made:
        stack.close()


def register(http: httpx.Client, tenant: Tenant, user: uuid.UUID, platform: str) -> tuple[str, str]:
    token = secrets.token_hex(32) if platform == "ios" else secrets.token_urlsafe(48)
    response = http.post("/push/devices/register", json={"app_id": str(tenant.id), "platform": platform,
                                                         "push_token": token}, headers=tenant.user_headers(user))
    assert response.status_code == 201, response.text
    return response.json()["device_id"], token


def set_up(stack: Stack, tenant: Tenant, apns, fcm) -> tuple[uuid.UUID, dict[str, dict[str, list]]]:
    """A user with three iOS and three Android devices; the first of each platform stalls."""
    tenant.configure_apns(apns)
    tenant.configure_fcm(fcm)
    user = uuid.uuid4()
    tenant.enroll(user)
    devices: dict[str, dict[str, list]] = {}
    for platform, service in (("ios", apns), ("android", fcm)):
        registered = [register(stack.http, tenant, user, platform) for _ in range(3)]
        service.set_behavior(registered[0][1], None, delay=STALL_SECONDS)
        devices[platform] = {"stalled": registered[:1], "answered": registered[1:]}
    return user, devices


def send(stack: Stack, tenant: Tenant, user: uuid.UUID) -> str:
    response = stack.http.post("/push/send", json={"user_id": str(user), "title": "Ward round", "body": "At 10."},
                               headers=tenant.service_headers())
    assert response.status_code == 200, response.text
    return response.json()["notification_id"]


def written(stack: Stack, tenant: Tenant, notification_id: str) -> dict[str, dict]:
    """The notification's deliveries by device once none is pending or sending (the chunks wrote them)."""

    def done():
        body = stack.http.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers()).json()
        deliveries = body["deliveries"]
        if len(deliveries) == 6 and all(d["status"] not in ("pending", "sending") for d in deliveries):
            return {d["device_id"]: d for d in deliveries}
        return None

    return wait_until("the chunks' outcomes written", done, 60, detail=stack.logs)


def assert_answered_kept_and_stalled_retried(by_device, devices, apns, fcm, stalled_error: Callable[[str], str]):
    received = {"ios": lambda token: len(apns.messages(token)), "android": lambda token: len(fcm.messages(token))}
    for platform in ("ios", "android"):
        for device_id, token in devices[platform]["answered"]:  # accepted once, sent, never pushed again
            delivery = by_device[device_id]
            assert (delivery["status"], delivery["attempts"]) == ("sent", 1), delivery
            assert received[platform](token) == 1
        ((device_id, token),) = devices[platform]["stalled"]
        delivery = by_device[device_id]
        assert (delivery["status"], delivery["attempts"]) == ("retrying", 1), delivery
        assert delivery["last_error"] == stalled_error(platform)
        assert received[platform](token) == 0


def test_apns_and_fcm_honour_the_push_deadline(stack_factory, tenant, apns_service, fcm_service):
    """A 2 s deadline (the vendor timeouts would allow 5 + 10 s): soft limit 4 s, hard 6 s. The stalled push of
    each chunk is given up at the deadline; the chunk's answered pushes are written as sent."""
    stack = stack_factory(2.0)
    stack.worker()
    user, devices = set_up(stack, tenant, apns_service, fcm_service)

    by_device = written(stack, tenant, send(stack, tenant, user))

    assert_answered_kept_and_stalled_retried(
        by_device, devices, apns_service, fcm_service, {"ios": "APNs timed out", "android": "FCM timed out"}.get
    )


def test_answers_that_came_back_are_kept_when_the_soft_time_limit_fires(
    stack_factory, tenant, apns_service, fcm_service, engine
):
    """A 4 s deadline: soft limit 8 s. The claim is held up 5 s by a lock on the delivery rows (a slow
    database), so the chunks' stalled pushes are still within their deadline when the soft limit fires:
    the answers that came back are written as sent, only the stalled pushes are retried."""
    stack = stack_factory(4.0)
    stack.worker((FANOUT_QUEUE,))  # fans out; the chunks wait in their queues for the second worker
    user, devices = set_up(stack, tenant, apns_service, fcm_service)
    notification_id = send(stack, tenant, user)

    def fanned_out():
        with engine.connect() as connection:
            return connection.scalar(text("SELECT count(*) FROM deliveries WHERE notification_id = :n"),
                                     {"n": notification_id}) == 6

    wait_until("fan-out", fanned_out, 30, detail=stack.logs)
    with engine.connect() as lock, lock.begin():
        lock.execute(text("SELECT id FROM deliveries WHERE notification_id = :n FOR UPDATE"), {"n": notification_id})
        stack.worker((PLATFORM_QUEUES["ios"], PLATFORM_QUEUES["android"]))

        def claims_waiting():
            with engine.connect() as connection:
                return connection.scalar(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE 'UPDATE deliveries%'"
                )) >= 2  # the suite's own worker, on the same database, may be waiting on these rows too

        wait_until("both chunks' claims waiting on the lock", claims_waiting, 30, detail=stack.logs)
        time.sleep(5)  # the fault: the claims (and the chunks' time limits) run on meanwhile

    by_device = written(stack, tenant, notification_id)

    assert_answered_kept_and_stalled_retried(
        by_device, devices, apns_service, fcm_service,
        lambda _: "no answer before the chunk was interrupted (SoftTimeLimitExceeded)",
    )
    assert "stopped at its time limit" in stack.logs()
