"""Enrollment: service callers decide which of their users may be sent to."""

from __future__ import annotations

import uuid


def test_enroll_send_unenroll(client, tenant):
    user = uuid.uuid4()
    headers = tenant.service_headers()
    send = {"user_id": str(user), "title": "t", "body": "b"}
    assert client.post("/push/send", json=send, headers=headers).json["message"] == "User not enrolled"
    enrolled = client.put(f"/push/enrollments/{user}", headers=headers)
    assert enrolled.status_code == 200
    assert (enrolled.json["app_id"], enrolled.json["user_id"]) == (str(tenant.id), str(user))
    assert client.put(f"/push/enrollments/{user}", headers=headers).status_code == 200  # idempotent
    assert client.get(f"/push/enrollments/{user}", headers=headers).status_code == 200
    assert client.post("/push/send", json=send, headers=headers).status_code == 200
    assert client.delete(f"/push/enrollments/{user}", headers=headers).json == {"status": "ok"}
    again = client.delete(f"/push/enrollments/{user}", headers=headers)
    assert (again.status_code, again.json["error"]) == (404, "enrollment_not_found")
    assert client.post("/push/send", json=send, headers=headers).status_code == 400


def test_bulk_enroll_counts_new_users_and_lists_in_pages(client, tenant):
    headers = tenant.service_headers()
    users = [str(uuid.uuid4()) for _ in range(15)]
    assert client.post("/push/enrollments", json={"user_ids": users[:10]}, headers=headers).json == {"enrolled": 10}
    assert client.post("/push/enrollments", json={"user_ids": users}, headers=headers).json == {"enrolled": 5}
    first = client.get("/push/enrollments?limit=10", headers=headers).json
    second = client.get(f"/push/enrollments?limit=10&cursor={first['next_cursor']}", headers=headers).json
    assert second["next_cursor"] is None
    assert [e["user_id"] for e in first["items"] + second["items"]] == sorted(users)
    assert client.get("/push/enrollments?limit=0", headers=headers).status_code == 400


def test_enrollments_are_per_app(client, tenant, other_tenant):
    user = uuid.uuid4()
    enrolled = client.put(f"/push/enrollments/{user}", headers=tenant.service_headers())
    assert enrolled.status_code == 200, enrolled.json
    # The positive control: the enrolling app sees the enrollment and may send to the user.
    own = tenant.service_headers()
    assert client.get(f"/push/enrollments/{user}", headers=own).status_code == 200
    assert [e["user_id"] for e in client.get("/push/enrollments", headers=own).json["items"]] == [str(user)]
    assert client.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"}, headers=own).status_code == 200
    other = other_tenant.service_headers()
    assert client.get(f"/push/enrollments/{user}", headers=other).status_code == 404
    assert client.delete(f"/push/enrollments/{user}", headers=other).status_code == 404
    assert client.get("/push/enrollments", headers=other).json["items"] == []
    response = client.post("/push/send", json={"user_id": str(user), "title": "t", "body": "b"}, headers=other)
    assert response.json["message"] == "User not enrolled"


def test_enrollment_needs_a_service_token(client, tenant):
    response = client.put(f"/push/enrollments/{uuid.uuid4()}", headers=tenant.user_headers(uuid.uuid4()))
    assert (response.status_code, response.json["message"]) == (403, "Missing required scope")
