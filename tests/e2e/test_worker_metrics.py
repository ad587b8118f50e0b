"""The worker's own metrics port (PUSHQ_WORKER_METRICS_PORT), on a real Celery worker process.

It used to listen on every interface and to ignore PUSHQ_METRICS_TOKEN: anyone who
could reach the host read every app's delivery figures. It now listens on
loopback unless PUSHQ_WORKER_METRICS_HOST says otherwise, and asks for the same
bearer token as the API's /metrics.
"""

from __future__ import annotations

import os
import socket

import httpx
import psutil
import redis

from tests.support.harness import TEST_ENV, own_database, start_worker

TOKEN = "worker-metrics-" + "t" * 20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_worker_metrics_port_listens_on_loopback_and_asks_for_the_token(tmp_path):
    strict_redis = os.environ.get("TEST_EGRESS_REDIS_URL", "redis://127.0.0.1:6379/8")
    redis.Redis.from_url(strict_redis).flushdb()
    port = _free_port()
    # Its own database and broker: this worker's scheduler must not pick up other tests' work.
    env = {**os.environ, **TEST_ENV, "PYTHONWARNINGS": "ignore", "REDIS_URL": strict_redis,
           "DATABASE_URL": own_database("egress"),
           "PUSHQ_METRICS_DIR": str(tmp_path / "metrics"), "PUSHQ_WORKER_METRICS_PORT": str(port),
           "PUSHQ_METRICS_TOKEN": TOKEN}
    worker = start_worker(env, tmp_path / "worker.log", tmp_path / "schedule")
    try:
        listening = [c.laddr for c in psutil.Process(worker.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert [address.ip for address in listening] == ["127.0.0.1"]
        url = f"http://127.0.0.1:{port}/metrics"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            refused = httpx.get(url, headers=headers, timeout=5, trust_env=False)
            assert refused.status_code == 401, headers
            assert refused.json() == {"error": "invalid_token", "message": "Invalid token"}
            assert refused.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        scraped = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5, trust_env=False)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        worker.log_file.close()
    assert f"serving this host's metrics on 127.0.0.1:{port} (bearer token required)" in worker.log_path.read_text()
