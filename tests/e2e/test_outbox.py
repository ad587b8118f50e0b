"""The accept path's outbox: what the API answered 200 is fanned out by the workers' pump, whatever happens after.

Both tests run on a database and Redis of their own with the sweep pushed an hour
away, so only the outbox pump (its signal, or its polling) can deliver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid

import httpx
from sqlalchemy import select

from api.app import create_app
from shared.db import session_scope
from shared.models import Notification
from shared.services.sends import SendRequest, create_notifications
from tests.support.harness import ROOT, start_worker
from tests.support.helpers import wait_for

NO_SWEEP = {"PUSHQ_SWEEP_AFTER_SECONDS": "3600"}


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def web_user(own_services, tenant, push_service) -> tuple[uuid.UUID, dict]:
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription()
    client = create_app(own_services.settings).test_client()
    registered = client.post("/push/devices/register", json={"app_id": str(tenant.id), "platform": "web",
                                                             "push_token": json.dumps(subscription)},
                             headers=tenant.user_headers(user))
    assert registered.status_code == 201, registered.get_json()
    return user, subscription


def statuses(own_services, ids: list[str]) -> dict[str, str]:
    with own_services.session_factory() as session:
        rows = session.execute(select(Notification.id, Notification.status)
                               .where(Notification.id.in_([uuid.UUID(i) for i in ids]))).all()
    return {str(row.id): row.status for row in rows}


def test_a_committed_send_whose_signal_never_came_is_fanned_out_by_the_pumps_polling(own_services, push_service, tmp_path):
    tenant = own_services.tenant()
    user, subscription = web_user(own_services, tenant, push_service)
    with session_scope(own_services.session_factory) as session:  # committed, and no signal sent at all
        (notification_id,) = create_notifications(session, tenant.id, [SendRequest(user, "Polled", "b")],
                                                  default_ttl=3600, enqueue=lambda _ids: None).notification_ids
    worker = start_worker(own_services.env(**NO_SWEEP), tmp_path / "worker.log", tmp_path / "schedule")
    try:
        wait_for(lambda: statuses(own_services, [str(notification_id)]) == {str(notification_id): "delivered"},
                 timeout=60, what="the polled notification to be delivered")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        worker.log_file.close()
    assert [m.json()["title"] for m in push_service.messages(subscription)] == ["Polled"]


def test_an_api_sigkilled_right_after_answering_loses_nothing_it_answered(own_services, push_service, tmp_path):
    """Real gunicorn (as the Procfile serves), real worker: kill -9 the API while sends stream in."""
    env = own_services.env(**NO_SWEEP)
    tenant = own_services.tenant()
    user, subscription = web_user(own_services, tenant, push_service)
    worker = start_worker(env, tmp_path / "worker.log", tmp_path / "schedule")
    port = free_port()
    log = open(tmp_path / "api.log", "w")  # noqa: SIM115 - closed below
    api = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--worker-class", "gthread", "--threads", "4", "api.wsgi:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    answered: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2, trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=120, interval=0.2, what="gunicorn to answer /healthz")

        def send_until_killed(thread: int) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as http:
                for n in range(1000):
                    try:
                        response = http.post("/push/send", headers=tenant.service_headers(),
                                             json={"user_id": str(user), "title": f"m{thread}-{n}", "body": "b"})
                    except httpx.HTTPError:
                        return  # the server is gone: this one was never answered
                    assert response.status_code == 200, response.text
                    with lock:
                        answered.append(response.json()["notification_id"])
                        if len(answered) >= 12 and not killed.is_set():
                            killed.set()
                            os.killpg(api.pid, signal.SIGKILL)  # right after a 200, others mid-request
                            return

        senders = [threading.Thread(target=send_until_killed, args=(t,)) for t in range(3)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=120)
        assert killed.is_set()
        api.wait(timeout=30)
        wait_for(lambda: set(statuses(own_services, answered).values()) == {"delivered"}, timeout=60,
                 what="every answered notification to be delivered")
    finally:
        if api.poll() is None:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(timeout=30)
        log.close()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        worker.log_file.close()
    assert len(statuses(own_services, answered)) == len(answered) >= 12
    titles = {m.json()["title"] for m in push_service.messages(subscription)}
    with own_services.session_factory() as session:
        wanted = set(session.scalars(select(Notification.title)
                                     .where(Notification.id.in_([uuid.UUID(i) for i in answered]))))
    assert wanted <= titles
