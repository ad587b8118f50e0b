"""End to end through HTTP: register -> send -> worker -> local Web Push service -> status."""

from __future__ import annotations

import uuid

from tests.support.flows import (
    bulk_and_check_every_device,
    final_notification,
    register_web,
    send_one_and_check_delivery,
)


def test_send_is_encrypted_delivered_and_recorded(api, worker, tenant, push_service):
    send_one_and_check_delivery(api, tenant, push_service)


def test_bulk_reaches_every_device_of_every_user(api, worker, tenant, push_service):
    bulk_and_check_every_device(api, tenant, push_service)


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
