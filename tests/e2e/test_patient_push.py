"""POST /v1/push/send: the patient fan-out contract, end to end with real workers and the local push service."""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from pathlib import Path

import httpx
import jsonschema
import pytest
import redis
from sqlalchemy import text

from api.app import create_app
from tests.support.faults import Proc, RedisServer, free_port, port_open
from tests.support.flows import register_web
from tests.support.harness import ROOT, TEST_ENV, LiveServer
from tests.support.helpers import wait_for

# The contract's 200 response schema, copied from the API document (seed 000).
CONTRACT_RESPONSE_SCHEMA = json.loads("""
{
  "type": "object",
  "properties": {
    "patient_id": {"type": "string"},
    "person_id": {"type": "string"},
    "sent": {"type": "integer"},
    "rejected": {"type": "integer"},
    "results": {
      "type": "array",
      "items": {
        "type": "object",
        "properties": {
          "subscription_id": {"type": "string"},
          "status": {"type": "string", "enum": ["sent", "rejected"]},
          "vendor_message_id": {"type": "string"}
        },
        "required": ["subscription_id", "status", "vendor_message_id"]
      }
    }
  },
  "required": ["patient_id", "person_id", "sent", "rejected", "results"]
}
""")
CONTRACT_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    "required": ["error", "message"],
}


def map_patient(api, tenant, patient_id: uuid.UUID, person_id: uuid.UUID) -> None:
    response = api.put(f"/v1/patients/{patient_id}/identity", json={"person_id": str(person_id)},
                       headers=tenant.service_headers())
    assert response.status_code == 201, response.text  # a new patient's mapping is created (200: replaced)


def patient_send(api, tenant, patient_id, **fields):
    body = {"patientId": str(patient_id), "title": "Lab results ready", "body": "Tap to view.", **fields}
    return api.post("/v1/push/send", json=body, headers=tenant.service_headers(), timeout=30)


def test_fan_out_reports_sent_and_rejected_and_disables_the_gone_subscription(api, worker, tenant, push_service):
    patient, person = uuid.uuid4(), uuid.uuid4()
    map_patient(api, tenant, patient, person)
    tenant.enroll(person)  # only users enrolled in the app may register devices into it
    subscriptions = [push_service.new_subscription() for _ in range(3)]
    device_ids = [register_web(api, tenant, person, s) for s in subscriptions]
    push_service.set_behavior(subscriptions[2], 410)

    response = patient_send(api, tenant, patient, url="https://care.example/results/42")

    assert response.status_code == 200, response.text
    result = response.json()
    jsonschema.validate(result, CONTRACT_RESPONSE_SCHEMA)
    assert result["patient_id"] == str(patient) and result["person_id"] == str(person)
    assert (result["sent"], result["rejected"]) == (2, 1)
    by_id = {r["subscription_id"]: r for r in result["results"]}
    assert set(by_id) == set(device_ids)
    for subscription, device_id in zip(subscriptions[:2], device_ids[:2]):
        (message,) = push_service.messages(subscription)
        received = message.json()
        assert received.pop("receipt").startswith("r1.")  # the delivery's receipt token
        assert received == {"title": "Lab results ready", "body": "Tap to view.", "data": {},
                            "url": "https://care.example/results/42"}
        assert by_id[device_id]["status"] == "sent"
        assert by_id[device_id]["vendor_message_id"].endswith(message.id)
    assert by_id[device_ids[2]] == {"subscription_id": device_ids[2], "status": "rejected", "vendor_message_id": ""}

    again = patient_send(api, tenant, patient).json()  # the 410 subscription was disabled
    assert (again["sent"], again["rejected"], len(again["results"])) == (2, 0, 2)
    assert push_service.attempts(subscriptions[2]) == 1


def test_only_web_subscriptions_are_fanned_out(api, worker, tenant, push_service):
    patient, person = uuid.uuid4(), uuid.uuid4()
    map_patient(api, tenant, patient, person)
    tenant.enroll(person)  # only users enrolled in the app may register devices into it
    web = register_web(api, tenant, person, push_service.new_subscription())
    ios = api.post("/push/devices/register", json={"app_id": str(tenant.id), "platform": "ios", "push_token": "cd" * 32},
                   headers=tenant.user_headers(person))
    assert ios.status_code == 201, ios.text
    # The positive control: the person has both devices, active.
    devices = api.get("/push/devices", params={"user_id": str(person)}, headers=tenant.service_headers())
    assert devices.status_code == 200, devices.text
    active = {(d["id"], d["platform"]) for d in devices.json()["items"] if not d.get("disabled_at")}
    assert active == {(web, "web"), (ios.json()["device_id"], "ios")}
    response = patient_send(api, tenant, patient)
    assert response.status_code == 200, response.text
    result = response.json()
    assert [r["subscription_id"] for r in result["results"]] == [web]


def test_user_token_is_refused_with_the_contract_message(api, tenant):
    response = api.post("/v1/push/send", json={"patientId": str(uuid.uuid4()), "title": "t", "body": "b"},
                        headers=tenant.user_headers(uuid.uuid4()))
    assert response.status_code == 403
    assert response.json() == {"error": "m2m_only", "message": "Only M2M callers may send push"}
    jsonschema.validate(response.json(), CONTRACT_ERROR_SCHEMA)


def test_service_token_without_push_send_scope_is_refused(api, tenant):
    response = api.post("/v1/push/send", json={"patientId": str(uuid.uuid4()), "title": "t", "body": "b"},
                        headers=tenant.service_headers(scopes=("push:read",)))
    assert response.status_code == 403
    assert response.json()["message"] == "Missing required scope"


def test_missing_token_is_401(api):
    response = api.post("/v1/push/send", json={"patientId": str(uuid.uuid4()), "title": "t", "body": "b"})
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token", "message": "Invalid token"}


def test_unknown_patient_and_missing_mapping_are_404_with_their_own_messages(api, tenant):
    unknown = patient_send(api, tenant, uuid.uuid4())
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "patient_not_found", "message": "Patient not found"}

    patient = uuid.uuid4()
    map_patient(api, tenant, patient, uuid.uuid4())
    assert api.delete(f"/v1/patients/{patient}/identity", headers=tenant.service_headers()).status_code == 200
    unmapped = patient_send(api, tenant, patient)
    assert unmapped.status_code == 404
    assert unmapped.json() == {"error": "identity_mapping_not_found", "message": "Identity mapping not found"}
    for response in (unknown, unmapped):
        jsonschema.validate(response.json(), CONTRACT_ERROR_SCHEMA)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"patientId": "not-a-uuid", "title": "t", "body": "b"}, "patientId"),
        ({"patientId": "00000000-0000-0000-0000-000000000001", "title": "", "body": "b"}, "title"),
        ({"patientId": "00000000-0000-0000-0000-000000000001", "title": "t", "body": ""}, "body"),
        ({"title": "t", "body": "b"}, "patientId"),
        ({"patientId": "00000000-0000-0000-0000-000000000001", "title": "t", "body": "b", "url": 5}, "url"),
    ],
)
def test_validation_errors_are_400(api, tenant, body, field):
    response = api.post("/v1/push/send", json=body, headers=tenant.service_headers())
    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"
    assert field in response.json()["fields"]


def test_patient_without_subscriptions_gets_zero_counts(api, worker, tenant):
    patient = uuid.uuid4()
    map_patient(api, tenant, patient, uuid.uuid4())
    response = patient_send(api, tenant, patient)
    assert response.status_code == 200
    result = response.json()
    jsonschema.validate(result, CONTRACT_RESPONSE_SCHEMA)
    assert (result["sent"], result["rejected"], result["results"]) == (0, 0, [])


def test_a_stalled_push_service_is_pending_at_the_deadline_then_sent(api, worker, tenant, push_service, settings):
    patient, person = uuid.uuid4(), uuid.uuid4()
    map_patient(api, tenant, patient, person)
    tenant.enroll(person)  # only users enrolled in the app may register devices into it
    subscription = push_service.new_subscription()
    device_id = register_web(api, tenant, person, subscription)
    # Slow, then accepts: slower than the 1 s deadline, faster than the worker's 3 s read timeout
    # (past that the worker would retry, and the push service could get the message twice).
    push_service.set_behavior(subscription, 201, delay=2, times=1)

    impatient = LiveServer(create_app(settings.replace(fanout_wait_seconds=1))).start()  # waits 1 s, not 10
    try:
        with httpx.Client(base_url=impatient.url, trust_env=False, timeout=30) as http:
            result = patient_send(http, tenant, patient).json()
    finally:
        impatient.stop()

    assert result["results"] == [{"subscription_id": device_id, "status": "pending", "vendor_message_id": ""}]
    assert (result["sent"], result["rejected"]) == (0, 0)

    def delivered():
        body = api.get(f"/push/notifications/{result['notification_id']}", headers=tenant.service_headers()).json()
        return body if body["status"] == "delivered" else None

    notification = wait_for(delivered)
    assert notification["deliveries"][0]["status"] == "sent"
    assert len(push_service.messages(subscription)) == 1


def test_openapi_documents_the_scope_and_the_pending_extension(client):
    document = client.get("/openapi.json").json
    operation = document["paths"]["/v1/push/send"]["post"]
    assert operation["security"] == [{"serviceToken": ["push:send"]}]
    assert {"200", "400", "401", "403", "404"} <= set(operation["responses"])
    result_schema = document["components"]["schemas"]["SubscriptionResult"]
    assert result_schema["properties"]["status"]["enum"] == ["sent", "rejected", "pending"]
    assert "notification_id" in document["components"]["schemas"]["PatientSendResponse"]["properties"]


def test_an_idempotency_key_is_answered_even_when_the_wait_fails(api, tenant, push_service, monkeypatch):
    """The answer (with the notification id) is stored when the send commits, before the wait:
    a failure during the wait never leaves the key "in progress" (409) for the retry."""
    from shared.services import patient_push as service

    patient, person = uuid.uuid4(), uuid.uuid4()
    tenant.enroll(person)
    map_patient(api, tenant, patient, person)
    register_web(api, tenant, person, push_service.new_subscription())

    def broken_wait(*args, **kwargs):
        raise RuntimeError("the wait broke")

    monkeypatch.setattr(service, "wait_for_first_attempts", broken_wait)
    headers = {**tenant.service_headers(), "Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"patientId": str(patient), "title": "t", "body": "b"}
    first = api.post("/v1/push/send", json=body, headers=headers)  # committed: 200 whatever the wait did
    assert first.status_code == 200 and first.json()["results"][0]["status"] == "pending"
    replay = api.post("/v1/push/send", json=body, headers=headers)
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    answer = replay.json()
    assert answer["results"][0]["status"] == "pending" and uuid.UUID(answer["notification_id"])


def test_redis_failing_during_the_wait_still_answers_200_with_pending(tmp_path, api, worker, tenant, push_service,
                                                                     settings, engine):
    """Issue 16 item 6: once the send is committed, a Redis failure during the wait used to answer 503
    "try again", and a retry without an Idempotency-Key sent the patient the message twice."""
    patient, person = uuid.uuid4(), uuid.uuid4()
    map_patient(api, tenant, patient, person)
    tenant.enroll(person)
    subscription = push_service.new_subscription()
    device_id = register_web(api, tenant, person, subscription)
    push_service.set_behavior(subscription, 201, delay=2, times=1)  # the wait is still on when Redis goes

    # This API's Redis (quotas, the wait) is a redis-server of the test's own; its broker is the worker's.
    own = RedisServer(tmp_path / "redis").start()
    server = LiveServer(create_app(settings.replace(redis_url=own.url, broker_url=settings.redis_url))).start()
    answers: list[httpx.Response] = []
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as http:
            sender = threading.Thread(target=lambda: answers.append(patient_send(http, tenant, patient)))
            sender.start()
            waiting = redis.Redis.from_url(own.url)
            wait_for(lambda: waiting.pubsub_channels("pushq:outcomes:*"), what="the call waiting on Redis")
            waiting.close()
            own.stop()  # after the commit, during the wait
            sender.join(timeout=30)
    finally:
        server.stop()
        own.stop()

    (answer,) = answers
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["results"] == [{"subscription_id": device_id, "status": "pending", "vendor_message_id": ""}]
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM notifications WHERE app_id = :a"), {"a": tenant.id}) == 1
    final = wait_for(lambda: (lambda body: body if body["status"] == "delivered" else None)(
        api.get(f"/push/notifications/{result['notification_id']}", headers=tenant.service_headers()).json()))
    assert final["deliveries"][0]["status"] == "sent" and len(push_service.messages(subscription)) == 1


def test_a_waiter_killed_mid_wait_frees_its_slot_at_its_own_expiry_under_steady_traffic(
    tmp_path, api, worker, tenant, push_service, settings, redis_client
):
    """Issue 16 item 6: the per-app wait slots were one counter whose expiry every call reset, so the
    slot of a waiter killed mid-wait never came back while other waits kept coming. Now each waiter's
    slot expires on its own: PUSHQ_FANOUT_WAIT_SECONDS + 5 s after it was taken."""
    limits = {"PUSHQ_MAX_WAITS_PER_APP": "1", "PUSHQ_FANOUT_WAIT_SECONDS": "5"}
    stalled_patient, stalled_person, patient, person = (uuid.uuid4() for _ in range(4))
    tenant.enroll(stalled_person, person)
    for p, q in ((stalled_patient, stalled_person), (patient, person)):
        map_patient(api, tenant, p, q)
    stalled = push_service.new_subscription()
    push_service.set_behavior(stalled, 201, delay=60)  # its first attempt is never answered in time
    register_web(api, tenant, stalled_person, stalled)
    register_web(api, tenant, person, push_service.new_subscription())

    # The waiter: gunicorn as the Procfile runs it, killed (SIGKILL) while it waits: it never releases.
    port = free_port()
    web = next(line.split(":", 1)[1] for line in (ROOT / "Procfile").read_text().splitlines()
               if line.startswith("web:"))
    gunicorn = Proc("gunicorn", ["bash", "-c", f"exec {web}"],
                    {**os.environ, **TEST_ENV, **limits, "PORT": str(port), "WEB_CONCURRENCY": "1",
                     "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONWARNINGS": "ignore"},
                    tmp_path)
    try:
        wait_for(lambda: port_open(port), timeout=30, detail=gunicorn.tail)

        def wait_there() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30) as http:
                try:
                    patient_send(http, tenant, stalled_patient)
                except httpx.HTTPError:
                    pass  # killed

        waiter = threading.Thread(target=wait_there)
        waiter.start()
        wait_for(lambda: redis_client.pubsub_channels("pushq:outcomes:*"), what="the gunicorn call waiting")
    finally:
        gunicorn.kill()
    waiter.join(timeout=30)

    # Steady traffic on another API process with the same limits: each call answers at once (no slot)
    # until the killed waiter's slot expires; then a call waits and sees its push sent.
    server = LiveServer(create_app(settings.replace(max_waits_per_app=1, fanout_wait_seconds=5))).start()
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as http:
            def waited() -> bool:
                return patient_send(http, tenant, patient).json()["results"][0]["status"] == "sent"

            wait_for(waited, timeout=40, interval=0.5, what="a call that got the killed waiter's slot")
    finally:
        server.stop()
