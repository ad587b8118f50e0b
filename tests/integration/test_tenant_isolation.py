"""No app can read, delete, send to or learn about another app's objects: every endpoint, second app's token."""

from __future__ import annotations

import json
import uuid

from tests.support.flows import final_notification, register_web


def test_every_endpoint_treats_another_apps_objects_as_absent(client, tenant, other_tenant, push_service):
    user, patient = uuid.uuid4(), uuid.uuid4()
    mine = tenant.service_headers()
    theirs = other_tenant.service_headers()
    tenant.enroll(user)
    device_id = client.post(
        "/push/devices/register",
        json={"app_id": str(tenant.id), "platform": "web", "push_token": json.dumps(push_service.new_subscription())},
        headers=tenant.user_headers(user),
    ).json["device_id"]
    notification_id = client.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"}, headers=mine).json[
        "notification_id"
    ]
    client.put(f"/v1/patients/{patient}/identity", json={"person_id": str(user)}, headers=mine)

    attempts = [
        ("get", f"/push/notifications/{notification_id}", None, 404, "Notification not found"),
        ("delete", f"/push/devices/{device_id}", None, 404, "Device not found"),
        ("get", f"/push/enrollments/{user}", None, 404, "User not enrolled"),
        ("delete", f"/push/enrollments/{user}", None, 404, "User not enrolled"),
        ("post", "/push/send", {"user_id": str(user), "title": "t", "body": "b"}, 400, "User not enrolled"),
        ("post", "/push/send/bulk", {"user_ids": [str(user)], "title": "t", "body": "b"}, 400, "User not enrolled"),
        ("post", "/push/send/batch", {"notifications": [{"user_id": str(user), "title": "t", "body": "b"}]}, 400,
         "User not enrolled"),
        ("get", f"/v1/patients/{patient}/identity", None, 404, "Patient not found"),
        ("delete", f"/v1/patients/{patient}/identity", None, 404, "Patient not found"),
        ("delete", f"/v1/patients/{patient}", None, 404, "Patient not found"),
        ("post", "/v1/push/send", {"patientId": str(patient), "title": "t", "body": "b"}, 404, "Patient not found"),
    ]
    for method, path, body, status, message in attempts:
        kwargs = {"json": body} if body is not None else {}
        response = getattr(client, method)(path, headers=theirs, **kwargs)
        assert (response.status_code, response.json["message"]) == (status, message), (method, path)

    listed = [
        client.get("/push/enrollments", headers=theirs).json["items"],
        client.get("/v1/patients", headers=theirs).json["items"],
    ]
    assert listed == [[], []]
    # Nothing of the first app changed.
    assert client.get(f"/push/notifications/{notification_id}", headers=mine).status_code == 200
    assert client.get(f"/push/enrollments/{user}", headers=mine).status_code == 200
    assert client.get(f"/v1/patients/{patient}/identity", headers=mine).json["person_id"] == str(user)
    assert client.delete(f"/push/devices/{device_id}", headers=mine).status_code == 200


def test_a_user_of_two_apps_only_gets_each_apps_sends_on_that_apps_devices(api, worker, tenant, other_tenant, push_service):
    user = uuid.uuid4()
    tenant.enroll(user)
    other_tenant.enroll(user)
    subscription = push_service.new_subscription()
    register_web(api, tenant, user, subscription)

    theirs = api.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"},
                      headers=other_tenant.service_headers()).json()["notification_id"]
    assert final_notification(api, other_tenant, theirs)["status"] == "no_devices"
    assert push_service.messages(subscription) == []
