"""Web Push retries, expiry and payload fitting, end to end with the real worker and scheduler."""

from __future__ import annotations

import uuid
from datetime import datetime

from tests.support.flows import final_notification, register_web
from tests.support.helpers import wait_for


def send(api, tenant, user, **fields) -> str:
    body = {"user_id": str(user), "title": "t", "body": "b", **fields}
    response = api.post("/push/send", json=body, headers=tenant.service_headers())
    assert response.status_code == 200, response.text
    return response.json()["notification_id"]


def setup_user(api, tenant, push_service):
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription()
    register_web(api, tenant, user, subscription)
    return user, subscription


def test_429_retry_after_is_honoured_then_sent(api, worker, tenant, push_service):
    user, subscription = setup_user(api, tenant, push_service)
    push_service.set_behavior(subscription, 429, retry_after=2, times=1)
    notification = final_notification(api, tenant, send(api, tenant, user))
    (delivery,) = notification["deliveries"]
    assert notification["status"] == "delivered"
    assert delivery["attempts"] == 2
    assert push_service.attempts(subscription) == 2
    (message,) = push_service.messages(subscription)
    created = datetime.fromisoformat(notification["created_at"]).timestamp()
    assert message.received_at - created >= 2.0  # not before Retry-After


def test_a_retry_never_reaches_the_user_who_took_over_the_browser(api, worker, tenant, push_service):
    """A's push gets 429 and waits for its retry; B signs in on the same browser (pushq.subscribe registers
    the same subscription again, which moves the device to B). A's message must never be pushed to it."""
    a, b = uuid.uuid4(), uuid.uuid4()
    tenant.enroll(a, b)
    subscription = push_service.new_subscription()
    device_id = register_web(api, tenant, a, subscription)
    push_service.set_behavior(subscription, 429, retry_after=4, times=1)
    for_a = send(api, tenant, a, title="private for A")
    wait_for(lambda: push_service.attempts(subscription) == 1, what="A's first push")
    assert register_web(api, tenant, b, subscription) == device_id  # the same device, now B's

    notification = final_notification(api, tenant, for_a)
    (delivery,) = notification["deliveries"]
    assert (notification["status"], delivery["status"], delivery["attempts"]) == ("failed", "rejected", 1)
    assert delivery["last_error"] == "device registered by another user since fan-out: not pushed"
    for_b = final_notification(api, tenant, send(api, tenant, b, title="for B"))
    assert for_b["status"] == "delivered"
    assert [m.json()["title"] for m in push_service.messages(subscription)] == ["for B"]
    assert push_service.attempts(subscription) == 2  # A's 429, B's message: A's retry never went out


def test_5xx_is_retried_until_the_attempt_limit_then_failed(api, worker, tenant, push_service):
    user, subscription = setup_user(api, tenant, push_service)
    push_service.set_behavior(subscription, 503)
    notification = final_notification(api, tenant, send(api, tenant, user))
    (delivery,) = notification["deliveries"]
    assert notification["status"] == "failed"
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == 3  # PUSHQ_MAX_ATTEMPTS in the test worker
    assert delivery["last_error"] == "gave up after 3 attempts: push service answered 503"
    assert push_service.attempts(subscription) == 3
    assert push_service.messages(subscription) == []


def test_ttl_running_out_while_retrying_ends_expired_and_is_never_sent_late(api, worker, tenant, push_service):
    user, subscription = setup_user(api, tenant, push_service)
    push_service.set_behavior(subscription, 503, retry_after=30, times=1)
    notification = final_notification(api, tenant, send(api, tenant, user, ttl=5))
    (delivery,) = notification["deliveries"]
    assert notification["status"] == "expired"
    assert delivery["status"] == "expired"
    assert delivery["attempts"] == 1
    assert "ttl expires before retry" in delivery["last_error"]
    assert push_service.messages(subscription) == []


def test_oversize_body_is_truncated_to_fit_and_decrypts(api, worker, tenant, push_service):
    user, subscription = setup_user(api, tenant, push_service)
    body = "é" * 4096  # 4096 characters, 8192 bytes: over Web Push's 3993-byte plaintext limit
    notification = final_notification(api, tenant, send(api, tenant, user, body=body, data={"k": "v"}))
    assert notification["status"] == "delivered"
    assert notification["truncated"] is True
    (message,) = push_service.messages(subscription)
    received = message.json()
    assert len(message.payload) <= 3993
    assert received["title"] == "t" and received["data"] == {"k": "v"}
    assert received["body"].endswith("…")
    assert body.startswith(received["body"][:-1])
    assert len(received["body"]) > 1500  # cut to the limit, not to nothing


def test_options_become_web_push_headers(api, worker, tenant, push_service):
    user, subscription = setup_user(api, tenant, push_service)
    final_notification(api, tenant, send(api, tenant, user, priority="high", collapse_key="shift-42", ttl=120))
    (message,) = push_service.messages(subscription)
    assert message.urgency == "high"
    assert message.topic == "shift-42"
    assert 100 < message.ttl <= 120


def test_a_lost_enqueue_is_picked_up_by_the_sweeper(api, worker, tenant, push_service, session_factory):
    """A notification committed but never enqueued (Redis was down) is still delivered."""
    from shared.db import session_scope
    from shared.services.sends import SendRequest, create_notifications

    user, subscription = setup_user(api, tenant, push_service)
    lost = []
    with session_scope(session_factory) as session:
        (notification_id,) = create_notifications(
            session, tenant.id, [SendRequest(user_id=user, title="lost", body="b")],
            default_ttl=600, enqueue=lost.extend,  # "enqueued" nowhere
        ).notification_ids
    assert lost == [notification_id]
    notification = final_notification(api, tenant, str(notification_id))
    assert notification["status"] == "delivered"
    assert [m.json()["title"] for m in push_service.messages(subscription)] == ["lost"]
