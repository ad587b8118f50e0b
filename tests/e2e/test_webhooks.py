"""Outcome webhooks end to end: the session worker delivers events to a real HTTP receiver that verifies
every signature with the standardwebhooks verifier and fails its first answers."""

from __future__ import annotations

import uuid

from standardwebhooks.webhooks import Webhook

from tests.support.flows import final_notification, register_web
from tests.support.helpers import wait_for
from tests.support.webhook_receiver import webhook_receiver


def subscribe(api, tenant, url: str) -> str:
    response = api.put("/push/webhook", json={"url": url}, headers=tenant.service_headers())
    assert response.status_code == 200, response.text
    return response.json()["secret"]


def test_every_event_reaches_a_receiver_that_fails_first(api, tenant, worker, push_service):
    with webhook_receiver(fail_first=3) as receiver:
        receiver.secrets.append(subscribe(api, tenant, receiver.url))
        user = uuid.uuid4()
        tenant.enroll(user)
        alive = push_service.new_subscription()
        gone = push_service.new_subscription()
        register_web(api, tenant, user, alive)
        gone_device = register_web(api, tenant, user, gone)
        push_service.set_behavior(gone, 410)
        sent = api.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"},
                        headers=tenant.service_headers())
        notification_id = sent.json()["notification_id"]
        final_notification(api, tenant, notification_id)

        completed = wait_for(lambda: [e for e in receiver.events("notification.completed")
                                      if e["data"]["notification_id"] == notification_id],
                             what="notification.completed at the receiver")
        disabled = wait_for(lambda: receiver.events("device.disabled"), what="device.disabled at the receiver")
        assert receiver.unverified == 0 and receiver.failures_answered == 3
        data = completed[0]["data"]
        assert data["status"] == "partially_delivered" and data["user_id"] == str(user)
        assert sorted(d["status"] for d in data["deliveries"]) == ["dead_token", "sent"]
        assert disabled[0]["data"]["device_id"] == gone_device and disabled[0]["data"]["reason"] == "dead_token"
        # The ids never change between attempts: every failed request's events came again under the same ids.
        delivered_ids = {e["id"] for e in receiver.events()}
        failed_ids = {e["id"] for r in receiver.received[:3] for e in r.events}
        assert failed_ids <= delivered_ids

        def all_delivered():
            shown = api.get("/push/webhook", headers=tenant.service_headers()).json()
            return shown if shown["events"]["pending"] == 0 else None

        shown = wait_for(all_delivered)
        assert shown["events"]["delivered"] == 2 and shown["last_success_at"] and shown["last_error"] is None
        events = api.get("/push/webhook/events", headers=tenant.service_headers()).json()["items"]
        assert {e["status"] for e in events} == {"delivered"}
        assert max(e["attempts"] for e in events) >= 2  # the failed answers were attempts


def test_rotated_secret_both_sign_for_a_while(api, tenant, worker):
    with webhook_receiver() as receiver:
        old = subscribe(api, tenant, receiver.url)
        new = api.post("/push/webhook/rotate-secret", headers=tenant.service_headers()).json()["secret"]
        receiver.secrets.append(old)  # a receiver still on the old secret
        user = uuid.uuid4()
        tenant.enroll(user)
        sent = api.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"},
                        headers=tenant.service_headers())
        notification_id = sent.json()["notification_id"]
        (event,) = wait_for(lambda: receiver.events("notification.completed"))
        assert event["data"] == {**event["data"], "notification_id": notification_id, "status": "no_devices"}
        first = receiver.received[0]
        assert first.signatures == 2 and receiver.unverified == 0
        # A receiver already on the new secret verifies the same request too.
        assert Webhook(new).verify(first.raw, first.headers)["id"] == event["id"]


def test_a_dead_endpoint_is_retried_and_shows_its_error(api, tenant, worker):
    api.put("/push/webhook", json={"url": "http://127.0.0.1:9/nothing-listens"}, headers=tenant.service_headers())
    user = uuid.uuid4()
    tenant.enroll(user)
    api.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"}, headers=tenant.service_headers())

    def retried():
        items = api.get("/push/webhook/events", headers=tenant.service_headers()).json()["items"]
        return items if items and items[0]["attempts"] >= 2 else None

    (event,) = wait_for(retried)
    assert event["status"] == "pending" and "connection failed" in event["last_error"]
    shown = api.get("/push/webhook", headers=tenant.service_headers()).json()
    assert "connection failed" in shown["last_error"] and shown["last_success_at"] is None


def test_events_due_together_go_in_one_batch(api, tenant, worker):
    with webhook_receiver() as receiver:
        receiver.secrets.append(subscribe(api, tenant, receiver.url))
        users = [uuid.uuid4() for _ in range(5)]
        tenant.enroll(*users)
        # Five users without devices: five notifications final at once, in one fan-out transaction.
        sent = api.post("/push/send/bulk", json={"user_ids": [str(u) for u in users], "title": "t", "body": "b"},
                        headers=tenant.service_headers())
        ids = set(sent.json()["notification_ids"])
        wait_for(lambda: {e["data"]["notification_id"] for e in receiver.events("notification.completed")} == ids)
        batch = next(r for r in receiver.received if r.body["type"] == "batch")
        assert len(batch.events) == 5 and batch.webhook_id.startswith("msg_batch_")
        assert len({e["id"] for e in batch.events}) == 5 and receiver.unverified == 0
