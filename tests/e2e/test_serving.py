"""The serving model: a slow fan-out cannot stall the API.

gunicorn runs exactly as the Procfile's ``web`` line says (threaded workers).
Eight ``POST /v1/push/send`` calls wait on a push service that stalls; meanwhile
``GET /healthz`` and ``POST /push/send`` are answered while the waiting calls still
wait (an ordering: they do not queue behind them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.db import session_scope
from shared.services.patients import put_mapping
from tests.support.flows import register_web
from tests.support.harness import ROOT, TEST_ENV
from tests.support.helpers import wait_for


def procfile_command(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} process in the Procfile")


@pytest.fixture
def gunicorn(tmp_path: Path, database) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bin_dir = Path(os.sys.executable).parent
    env = {**os.environ, **TEST_ENV, "PORT": str(port), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "PYTHONWARNINGS": "ignore"}
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(["bash", "-c", f"exec {procfile_command('web')}"], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), timeout=30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def test_waiting_fan_outs_do_not_stall_other_requests(gunicorn, api, worker, tenant, push_service, session_factory):
    person, patient = uuid.uuid4(), uuid.uuid4()
    tenant.enroll(person)
    with session_scope(session_factory) as session:
        put_mapping(session, tenant.id, patient, person)
    subscription = push_service.new_subscription()
    push_service.set_behavior(subscription, 201, delay=60, times=100)  # the push service stalls
    register_web(api, tenant, person, subscription)

    answers: list[httpx.Response] = []

    def patient_send() -> None:
        with httpx.Client(base_url=gunicorn, timeout=30, trust_env=False) as http:
            answers.append(http.post("/v1/push/send", json={"patientId": str(patient), "title": "t", "body": "b"},
                                     headers=tenant.service_headers()))

    senders = [threading.Thread(target=patient_send) for _ in range(8)]
    for sender in senders:
        sender.start()
    # The calls are in: those beyond PUSHQ_MAX_WAITS_PER_APP (4) answered at once, the other 4 hold
    # their threads waiting on the stalled service (until their 10 s wait ends).
    wait_for(lambda: len(answers) >= 4, timeout=30, what="the calls that do not wait to be answered")
    with httpx.Client(base_url=gunicorn, timeout=30, trust_env=False) as http:
        health = http.get("/healthz")
        response = http.post("/push/send", json={"user_id": str(person), "title": "t", "body": "b"},
                             headers=tenant.service_headers())
        still_waiting = 8 - len(answers)
    assert health.status_code == 200
    assert response.status_code == 200
    # Answered beside the waiting calls, not after them (an ordering, not a speed).
    assert still_waiting > 0, "the other requests were answered only once the waiting ones were"
    for sender in senders:
        sender.join(timeout=40)
    assert [a.status_code for a in answers] == [200] * 8
    # At most PUSHQ_MAX_WAITS_PER_APP (4) waited; the others answered at once with pending results.
    assert all(a.json()["results"][0]["status"] == "pending" for a in answers)
    assert len({a.json()["notification_id"] for a in answers}) == 8
