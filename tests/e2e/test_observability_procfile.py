"""Metrics and request ids with the processes the Procfile runs.

gunicorn starts exactly as the Procfile's ``web`` line says; one Celery worker
consuming every queue starts the Procfile's way (its ``fanout`` line, with all
queues). One notification goes to a browser, an iPhone and an Android device
through the three vendor stand-ins; ``/metrics`` on the API then shows the
worker's deliveries by vendor and outcome and the queues back at 0, and the
worker's (JSON) log lines about them carry the caller's ``X-Request-Id``.

The processes get a database and a Redis server of their own, so the suite's
worker (and its sweep) never takes their work.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.queues import ALL_QUEUES
from shared.config import Settings
from shared.db import make_engine, make_session_factory
from tests.support import harness
from tests.support.harness import ROOT, TEST_ENV, Tenant
from tests.support.helpers import wait_for

METRICS_TOKEN = "metrics-test-token"
QUEUES = ALL_QUEUES  # every queue the gauges report: the worker below consumes them all


def procfile_command(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} process in the Procfile")


def all_queues_worker_command() -> str:
    """The Procfile's fanout worker, consuming every queue (one worker instead of four on a 2-core machine)."""
    command = procfile_command("fanout")
    assert " -Q fanout,maintenance " in command and " -n fanout@%h " in command, command
    return command.replace(" -Q fanout,maintenance ", f" -Q {','.join(QUEUES)} ").replace(" -n fanout@%h ", " -n all@%h ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def own_database() -> Iterator[str]:
    """A database next to the test database, migrated afresh: nobody else's worker sweeps it."""
    with harness.own_database_scope("procfile") as url:
        yield url


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with harness.own_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


class Procfile:
    """The processes, each in its own process group, stopped at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.processes = env, logs, {}

    def start(self, name: str, command: str) -> Path:
        log_path = self.logs / f"{name}.log"
        log_file = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.processes[name] = (subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=ROOT, env=self.env,
                                                 stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True),
                                log_file)
        return log_path

    def stop(self) -> None:
        for process, _ in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process, log_file in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
            log_file.close()


def test_procfile_processes_report_deliveries_queues_and_request_ids(
    own_database, own_redis, push_service, apns_service, fcm_service, tmp_path: Path
):
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    bin_dir = Path(os.sys.executable).parent
    env = {
        **os.environ, **TEST_ENV,
        "DATABASE_URL": own_database, "REDIS_URL": own_redis, "PORT": str(port), "WEB_CONCURRENCY": "2",
        "WEB_THREADS": "4", "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONWARNINGS": "ignore",
        "PUSHQ_METRICS_DIR": str(metrics_dir), "PUSHQ_METRICS_TOKEN": METRICS_TOKEN, "PUSHQ_LOG_FORMAT": "json",
        "PUSHQ_DEFAULT_DAILY_QUOTA": "1",
        "PUSHQ_APNS_HOST": apns_service.host, "PUSHQ_APNS_PORT": str(apns_service.port),
        "PUSHQ_APNS_CA_FILE": str(apns_service.certificate.ca_path), "PUSHQ_FCM_BASE_URL": fcm_service.base_url,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the pytest process's own: pushq's processes claim theirs
    settings = Settings.from_env(env)
    tenant = Tenant(settings, make_session_factory(make_engine(own_database)))
    tenant.configure_apns(apns_service)
    tenant.configure_fcm(fcm_service)
    user = uuid.uuid4()
    tenant.enroll(user)

    procs = Procfile(env, tmp_path)
    try:
        procs.start("web", procfile_command("web"))
        worker_log = procs.start("worker", all_queues_worker_command())
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: '"ready."' in worker_log.read_text() or "ready." in worker_log.read_text(), timeout=60)
        with httpx.Client(base_url=url, timeout=10, trust_env=False) as api:
            wait_for(lambda: _answers(api), timeout=30)
            subscription = push_service.new_subscription()
            for platform, token in (("web", json.dumps(subscription)), ("ios", secrets.token_hex(32)),
                                    ("android", secrets.token_urlsafe(48))):
                response = api.post("/push/devices/register", headers=tenant.user_headers(user),
                                    json={"app_id": str(tenant.id), "platform": platform, "push_token": token})
                assert response.status_code == 201, response.text

            request_id = f"obs-{uuid.uuid4()}"
            sent = api.post("/push/send", json={"user_id": str(user), "title": "Hi", "body": "there"},
                            headers={**tenant.service_headers(), "X-Request-Id": request_id})
            assert sent.status_code == 200, sent.text
            assert sent.headers["X-Request-Id"] == request_id
            notification_id = sent.json()["notification_id"]
            refused = api.post("/push/send", json={"user_id": str(user), "title": "Hi", "body": "again"},
                               headers=tenant.service_headers())  # the daily quota of 1 is used up
            assert refused.status_code == 429
            assert len(refused.headers["X-Request-Id"]) == 32  # none given: one was made

            def delivered():
                body = api.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers()).json()
                return body if body["status"] == "delivered" else None

            wait_for(delivered, timeout=30)
            assert api.get("/metrics").status_code == 401

            def scrape() -> dict[tuple[str, tuple], float]:
                response = api.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
                assert response.status_code == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                        for family in text_string_to_metric_families(response.text) for sample in family.samples}

            def queues_empty_and_counted():
                # A worker counts a chunk just after writing its outcomes: "delivered" can be read first.
                samples = scrape()
                depths = {dict(labels)["queue"]: value for (name, labels), value in samples.items()
                          if name == "pushq_queue_depth"}
                counted = all(("pushq_deliveries_total", (("outcome", "sent"), ("vendor", vendor))) in samples
                              for vendor in ("webpush", "apns", "fcm"))
                return samples if counted and set(depths) == set(QUEUES) and not any(depths.values()) else None

            samples = wait_for(queues_empty_and_counted, timeout=20, interval=0.5)
            for vendor in ("webpush", "apns", "fcm"):
                assert samples[("pushq_deliveries_total", (("outcome", "sent"), ("vendor", vendor)))] == 1
                assert samples[("pushq_delivery_latency_seconds_count", (("vendor", vendor),))] == 1
                assert samples[("pushq_queue_waiting_items", (("queue", vendor),))] == 0
            assert samples[("pushq_notifications_accepted_total", (("endpoint", "/push/send"),))] == 1
            assert samples[("pushq_quota_refusals_total", (("endpoint", "/push/send"),))] == 1
            assert samples[("pushq_http_requests_total",
                            (("method", "POST"), ("route", "/push/send"), ("status", "200")))] == 1
            assert samples[("pushq_http_request_duration_seconds_count",
                            (("method", "POST"), ("route", "/push/devices/register")))] == 3

        lines = [json.loads(line) for line in worker_log.read_text().splitlines() if line.startswith("{")]
        tagged = [line["message"] for line in lines if request_id in line.get("request_ids", [])]
        assert any(message.startswith("fanned out 1 notifications") for message in tagged), tagged
        for platform in ("web", "ios", "android"):
            assert any(message.startswith(f"delivered 1 {platform} deliveries") for message in tagged), tagged
    finally:
        procs.stop()
    assert not any(metrics_dir.iterdir()), "stopped process groups leave no metrics behind"


def _answers(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False
