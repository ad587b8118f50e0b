"""End to end through HTTP: register -> send -> worker -> local Web Push service -> status."""

from __future__ import annotations

import uuid

from tests.support.flows import final_notification, register_web


def test_send_is_encrypted_delivered_and_recorded(api, worker, tenant, push_service):
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
    assert messages[0].json() == {"title": "Your shift starts in 30 min", "body": "Open GymOps.", "data": data}
    assert 3500 < messages[0].ttl <= 3600  # the remaining ttl, not more than asked
    assert messages[0].vapid_public_key == tenant.vapid_public_key
    assert notification["status"] == "delivered"
    (delivery,) = notification["deliveries"]
    assert delivery["device_id"] == device_id
    assert delivery["status"] == "sent"
    assert delivery["attempts"] == 1
    assert delivery["vendor_message_id"] == f"{push_service.base_url}/_standin/messages/{messages[0].id}"


def test_bulk_reaches_every_device_of_every_user(api, worker, tenant, push_service):
    users = [uuid.uuid4() for _ in range(3)]
    tenant.enroll(*users)
    subscriptions = {}
    for user in users:
        subscriptions[user] = [push_service.new_subscription() for _ in range(2)]
        for subscription in subscriptions[user]:
            register_web(api, tenant, user, subscription)
    response = api.post(
        "/push/send/bulk",
        json={"user_ids": [str(u) for u in users], "title": "Gym closes early today", "body": "Closing at 6pm."},
        headers=tenant.service_headers(),
    )
    assert response.status_code == 200
    ids = response.json()["notification_ids"]
    assert len(ids) == 3
    for user, notification_id in zip(users, ids):
        notification = final_notification(api, tenant, notification_id)
        assert notification["user_id"] == str(user)
        assert notification["status"] == "delivered"
        assert len(notification["deliveries"]) == 2
    for subscription_list in subscriptions.values():
        for subscription in subscription_list:
            assert [m.json()["title"] for m in push_service.messages(subscription)] == ["Gym closes early today"]


def test_gone_subscription_disables_device_and_next_send_skips_it(api, worker, tenant, push_service, session_factory):
    user = uuid.uuid4()
    tenant.enroll(user)
    alive, gone = push_service.new_subscription(), push_service.new_subscription()
    register_web(api, tenant, user, alive)
    gone_id = register_web(api, tenant, user, gone)
    push_service.set_behavior(gone, 410)

    first = api.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"}, headers=tenant.service_headers())
    notification = final_notification(api, tenant, first.json()["notification_id"])
    assert notification["status"] == "partially_delivered"
    dead = next(d for d in notification["deliveries"] if d["device_id"] == gone_id)
    assert dead["status"] == "dead_token"
    assert "410" in dead["last_error"]

    second = api.post("/push/send", json={"user_id": str(user), "title": "t2", "body": "b"}, headers=tenant.service_headers())
    notification = final_notification(api, tenant, second.json()["notification_id"])
    assert notification["status"] == "delivered"
    assert [d["device_id"] for d in notification["deliveries"]] != [gone_id]
    assert len(notification["deliveries"]) == 1
    assert push_service.attempts(gone) == 1


def test_user_without_devices_is_recorded_as_no_devices(api, worker, tenant):
    user = uuid.uuid4()
    tenant.enroll(user)
    response = api.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"}, headers=tenant.service_headers())
    assert final_notification(api, tenant, response.json()["notification_id"])["status"] == "no_devices"


def test_a_platform_the_app_has_no_credentials_for_is_rejected_with_the_reason(api, worker, tenant, push_service):
    user = uuid.uuid4()
    tenant.enroll(user)
    register_web(api, tenant, user, push_service.new_subscription())
    ios = api.post(
        "/push/devices/register",
        json={"app_id": str(tenant.id), "platform": "ios", "push_token": "ab" * 32},
        headers=tenant.user_headers(user),
    )
    assert ios.status_code == 201
    response = api.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"}, headers=tenant.service_headers())
    notification = final_notification(api, tenant, response.json()["notification_id"])
    by_platform = {d["platform"]: d for d in notification["deliveries"]}
    assert by_platform["web"]["status"] == "sent"
    assert (by_platform["ios"]["status"], by_platform["ios"]["last_error"]) == ("rejected", "app has no APNs credentials")
    assert notification["status"] == "partially_delivered"
