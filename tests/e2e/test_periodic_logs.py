"""The scheduler's periodic tasks are quiet when they have nothing to do (README "Operations", logs).

A real worker with its embedded beat, at ``make run``'s INFO level, on a database and a
Redis of its own, runs release-scheduled every 0.2 s, the sweep every 0.5 s and
housekeeping every second with nothing to do: no INFO line about them. A scheduled send
then comes due: the release that did something logs at INFO.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime, timedelta

import redis

from api.app import create_app
from broker.queues import HOUSEKEEPING_TASK, RELEASE_SCHEDULED_TASK, SWEEP_TASK
from shared.backlog import BACKLOG_KEY
from shared.db import session_scope
from shared.models import Notification
from tests.support.harness import start_worker
from tests.support.helpers import wait_for
from workers.logs import PeriodicTaskRuns

PERIODIC = re.compile(r"pushq\.(release_scheduled|sweep|housekeeping)|housekeeping:|scheduled notifications")


def test_idle_periodic_tasks_log_nothing_at_info_and_a_release_does(own_services, tmp_path):
    env = own_services.env(PUSHQ_LOG_LEVEL="INFO", PUSHQ_SCHEDULE_INTERVAL="0.2", PUSHQ_SWEEP_INTERVAL="0.5",
                           PUSHQ_HOUSEKEEPING_INTERVAL="1")
    worker = start_worker(env, tmp_path / "worker.log", tmp_path / "schedule")
    log_path = worker.log_path  # type: ignore[attr-defined]
    try:
        # The periodic tasks run with nothing to do: the sweep stores its backlog measure each run.
        store = redis.Redis.from_url(own_services.redis_url)
        for _ in range(3):
            store.delete(BACKLOG_KEY)
            wait_for(lambda: store.exists(BACKLOG_KEY), timeout=30, what="a sweep run")
        idle = log_path.read_text()

        tenant = own_services.tenant()
        user = uuid.uuid4()
        tenant.enroll(user)
        client = create_app(own_services.settings).test_client()
        send_at = datetime.now(UTC) + timedelta(seconds=1)
        response = client.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b",
                                                   "send_at": send_at.isoformat()}, headers=tenant.service_headers())
        assert response.status_code == 200, response.get_json()
        notification_id = uuid.UUID(response.get_json()["notification_id"])

        def released() -> bool:
            with session_scope(own_services.session_factory) as session:
                return session.get(Notification, notification_id).status != "scheduled"

        wait_for(released, timeout=30, what="the scheduled send to be released")
        wait_for(lambda: "released 1 scheduled notifications" in log_path.read_text(), timeout=10)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        worker.log_file.close()  # type: ignore[attr-defined]
    assert "ready." in idle
    noisy = [line for line in idle.splitlines() if PERIODIC.search(line) and not line.startswith("  . ")]  # banner
    assert noisy == [], "\n".join(noisy[:10])
    (release,) = [line for line in log_path.read_text().splitlines() if "released 1 scheduled notifications" in line]
    assert " INFO " in release


def _record(logger: str, msg: str, args: tuple, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(logger, logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_celery_lines_about_periodic_runs_are_debug_and_others_stay_info():
    runs = PeriodicTaskRuns([RELEASE_SCHEDULED_TASK, SWEEP_TASK, HOUSEKEEPING_TASK])
    beat = _record("celery.beat", "Scheduler: Sending due task %s (%s)", ("release-scheduled", RELEASE_SCHEDULED_TASK))
    received = _record("celery.worker.strategy", "Task %(name)s[%(id)s] received", (),
                       data={"name": SWEEP_TASK, "id": "1"})
    fanout = _record("celery.worker.strategy", "Task %(name)s[%(id)s] received", (),
                     data={"name": "pushq.fanout", "id": "2"})
    logging.getLogger("celery.beat").setLevel(logging.INFO)
    logging.getLogger("celery.worker.strategy").setLevel(logging.DEBUG)
    try:
        assert runs.filter(beat) is False  # below the logger's level now: dropped
        assert runs.filter(received) is True and received.levelname == "DEBUG"
        assert runs.filter(fanout) is True and fanout.levelname == "INFO"
    finally:
        logging.getLogger("celery.beat").setLevel(logging.NOTSET)
        logging.getLogger("celery.worker.strategy").setLevel(logging.NOTSET)


def test_an_expired_periodic_run_discarded_by_a_busy_worker_is_debug_and_a_revoked_send_stays_info():
    """Under load the worker reaches a periodic run past its ``expires`` and discards it: by design (the next
    tick replaces it), so not an INFO line every second; a discarded fan-out task is still worth seeing."""
    runs = PeriodicTaskRuns([RELEASE_SCHEDULED_TASK, SWEEP_TASK, HOUSEKEEPING_TASK])
    expired = _record("celery.worker.request", "Discarding revoked task: %s[%s]", (SWEEP_TASK, "1"))
    fanout = _record("celery.worker.request", "Discarding revoked task: %s[%s]", ("pushq.fanout", "2"))
    logging.getLogger("celery.worker.request").setLevel(logging.INFO)
    try:
        assert runs.filter(expired) is False and expired.levelname == "DEBUG"
        assert runs.filter(fanout) is True and fanout.levelname == "INFO"
    finally:
        logging.getLogger("celery.worker.request").setLevel(logging.NOTSET)
