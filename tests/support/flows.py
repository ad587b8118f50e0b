"""Steps many end-to-end tests take: register a browser, wait for a notification to be final."""

from __future__ import annotations

import json
import uuid

from shared.receipts import ReceiptTokens, derive_key
from tests.support.helpers import wait_for


def receipt_tokens(settings) -> ReceiptTokens:
    """The receipt tokens the workers sign (the test settings' key)."""
    return ReceiptTokens(derive_key(settings.receipt_key, settings.token_hash_key))


def register_web(api, tenant, user_id, subscription) -> str:
    response = api.post(
        "/push/devices/register",
        json={"app_id": str(tenant.id), "platform": "web", "push_token": json.dumps(subscription)},
        headers=tenant.user_headers(user_id),
    )
    assert response.status_code == 201, response.text
    return response.json()["device_id"]


def final_notification(api, tenant, notification_id: str) -> dict:
    def done():
        body = api.get(f"/push/notifications/{notification_id}", headers=tenant.service_headers()).json()
        return body if body["status"] not in ("queued", "sending") else None

    return wait_for(done)


# -- the core scenario (tests/e2e/test_e2e_webpush.py, and through PgBouncer in test_pgbouncer.py)


def send_one_and_check_delivery(api, tenant, push_service) -> None:
    """One send to a browser: encrypted, delivered with the remaining TTL, recorded with the vendor's id."""
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    device_id = register_web(api, tenant, user, subscription)
    data = {"route": "/schedule", "ünïcode": "✓"}

    response = api.post(
        "/push/send",
        json={"user_id": str(user), "title": "Your shift starts in 30 min", "body": "Open GymOps.", "data": data, "ttl": 3600},
        headers=tenant.service_headers(),
    )
    assert response.status_code == 200, response.text
    notification_id = response.json()["notification_id"]

    notification = final_notification(api, tenant, notification_id)
    messages = push_service.messages(subscription)
    assert len(messages) == 1
    received = messages[0].json()
    receipt = received.pop("receipt")  # the delivery's receipt token, for pushq's service worker
    assert received == {"title": "Your shift starts in 30 min", "body": "Open GymOps.", "data": data}
    assert 3500 < messages[0].ttl <= 3600  # the remaining ttl, not more than asked
    assert messages[0].vapid_public_key == tenant.vapid_public_key
    assert notification["status"] == "delivered"
    (delivery,) = notification["deliveries"]
    assert delivery["device_id"] == device_id
    assert delivery["status"] == "sent"
    assert delivery["attempts"] == 1
    assert delivery["vendor_message_id"] == f"{push_service.base_url}/_standin/messages/{messages[0].id}"
    assert receipt_tokens(tenant.settings).delivery_id(receipt) == uuid.UUID(delivery["id"])


def bulk_and_check_every_device(api, tenant, push_service, users: int = 3) -> None:
    """A bulk send to users with two browsers each: every device gets the message once."""
    user_ids = [uuid.uuid4() for _ in range(users)]
    tenant.enroll(*user_ids)
    subscriptions = {}
    for user in user_ids:
        subscriptions[user] = [push_service.new_subscription() for _ in range(2)]
        for subscription in subscriptions[user]:
            register_web(api, tenant, user, subscription)
    response = api.post(
        "/push/send/bulk",
        json={"user_ids": [str(u) for u in user_ids], "title": "Gym closes early today", "body": "Closing at 6pm."},
        headers=tenant.service_headers(),
    )
    assert response.status_code == 200
    ids = response.json()["notification_ids"]
    assert len(ids) == users
    for user, notification_id in zip(user_ids, ids):
        notification = final_notification(api, tenant, notification_id)
        assert notification["user_id"] == str(user)
        assert notification["status"] == "delivered"
        assert len(notification["deliveries"]) == 2
    for subscription_list in subscriptions.values():
        for subscription in subscription_list:
            assert [m.json()["title"] for m in push_service.messages(subscription)] == ["Gym closes early today"]
