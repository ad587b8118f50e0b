"""Broadcasts and user tags through the API: validation, segments, quota, cancel, listings (no workers)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from shared.models import App, Broadcast, Delivery, Device, Notification
from shared.services.tags import MAX_TAGS_PER_USER


def enroll(client, headers, count: int) -> list[str]:
    users = [str(uuid.uuid4()) for _ in range(count)]
    assert client.post("/push/enrollments", json={"user_ids": users}, headers=headers).status_code == 200
    return users


def broadcast_body(audience, **extra):
    return {"title": "Gym closes early", "body": "Today at 18:00", "audience": audience, **extra}


def test_tags_are_set_read_and_bounded(client, tenant, other_tenant):
    headers = tenant.service_headers()
    (user,) = enroll(client, headers, 1)
    put = client.put(f"/push/enrollments/{user}/tags", json={"tags": ["vip", "city:paris", "vip"]}, headers=headers)
    assert put.status_code == 200, put.json
    assert put.json == {"user_id": user, "tags": ["city:paris", "vip"]}
    assert client.get(f"/push/enrollments/{user}/tags", headers=headers).json["tags"] == ["city:paris", "vip"]
    assert client.put(f"/push/enrollments/{user}/tags", json={"tags": []}, headers=headers).json["tags"] == []
    too_many = client.put(f"/push/enrollments/{user}/tags",
                          json={"tags": [f"t{i}" for i in range(MAX_TAGS_PER_USER + 1)]}, headers=headers)
    assert (too_many.status_code, too_many.json["error"]) == (400, "validation_error")
    for bad in ("x" * 65, "", "has space", "nul\x00"):
        response = client.put(f"/push/enrollments/{user}/tags", json={"tags": [bad]}, headers=headers)
        assert (response.status_code, response.json["error"]) == (400, "validation_error"), bad
    stranger = uuid.uuid4()
    assert client.put(f"/push/enrollments/{stranger}/tags", json={"tags": ["a"]}, headers=headers).status_code == 404
    assert client.get(f"/push/enrollments/{user}/tags", headers=other_tenant.service_headers()).status_code == 404
    # Unenrolling removes the tags with the enrollment.
    client.put(f"/push/enrollments/{user}/tags", json={"tags": ["vip"]}, headers=headers)
    client.delete(f"/push/enrollments/{user}", headers=headers)
    client.put(f"/push/enrollments/{user}", headers=headers)
    assert client.get(f"/push/enrollments/{user}/tags", headers=headers).json["tags"] == []


def test_a_broadcast_counts_its_audience_by_segment(client, tenant):
    headers = tenant.service_headers()
    users = enroll(client, headers, 6)
    for user, tags in zip(users, (["a", "b"], ["a"], ["b"], ["a", "b", "c"], [], ["c"]), strict=True):
        client.put(f"/push/enrollments/{user}/tags", json={"tags": tags}, headers=headers)
    cases = [({"everyone": True}, 6), ({"tags_all": ["a", "b"]}, 2), ({"tags_any": ["a", "c"]}, 4),
             ({"tags_all": ["a"], "tags_any": ["b", "c"]}, 2), ({"tags_any": ["nobody"]}, 0)]
    for audience, size in cases:
        accepted = client.post("/push/broadcasts", json=broadcast_body(audience), headers=headers)
        assert accepted.status_code == 202, accepted.json
        assert accepted.json["audience_size"] == size, audience
        assert accepted.json["status"] == "sending"
        found = client.get(f"/push/broadcasts/{accepted.json['broadcast_id']}", headers=headers).json
        assert found["audience_size"] == size
        assert found["counts"]["sent"] == 0 and found["started_at"] is not None


def test_a_broadcast_needs_exactly_one_audience(client, tenant):
    headers = tenant.service_headers()
    for audience in ({}, {"everyone": True, "tags_all": ["a"]}, {"everyone": False}, {"tags_all": ["bad tag"]},
                     {"everyone": True, "platforms": ["pager"]}):
        response = client.post("/push/broadcasts", json=broadcast_body(audience), headers=headers)
        assert (response.status_code, response.json["error"]) == (400, "validation_error"), audience
    missing = client.post("/push/broadcasts", json={"title": "t", "body": "b"}, headers=headers)
    assert missing.status_code == 400
    slow = client.post("/push/broadcasts", json=broadcast_body({"everyone": True}, rate_per_minute=0), headers=headers)
    assert slow.status_code == 400


def test_a_broadcast_larger_than_the_quota_left_is_refused_whole(client, tenant, session_factory):
    headers = tenant.service_headers()
    enroll(client, headers, 5)
    with session_factory.begin() as session:
        session.get(App, tenant.id).daily_quota = 7
    first = client.post("/push/broadcasts", json=broadcast_body({"everyone": True}), headers=headers)
    assert first.status_code == 202 and first.headers["X-Quota-Remaining"] == "2"
    refused = client.post("/push/broadcasts", json=broadcast_body({"everyone": True}), headers=headers)
    assert refused.status_code == 429
    assert refused.json == {"error": "daily_quota_exceeded", "message": "Daily quota exceeded",
                            "audience_size": 5, "quota_limit": 7, "quota_remaining": 2}
    assert refused.headers["X-Quota-Remaining"] == "2" and int(refused.headers["Retry-After"]) >= 1
    with session_factory() as session:
        assert session.scalar(select(Broadcast.id).where(Broadcast.id != uuid.UUID(first.json["broadcast_id"]))) is None


def test_a_broadcast_stores_its_message_once_and_is_idempotent(client, tenant, session_factory):
    headers = {**tenant.service_headers(), "Idempotency-Key": "gym-1"}
    enroll(client, headers, 3)
    first = client.post("/push/broadcasts", json=broadcast_body({"everyone": True}), headers=headers)
    again = client.post("/push/broadcasts", json=broadcast_body({"everyone": True}), headers=headers)
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    with session_factory() as session:
        messages = session.scalars(select(Notification)).all()
        assert [(m.user_id, m.title) for m in messages] == [(None, "Gym closes early")]
    # The message is no user's notification: not listed, not readable as one.
    assert client.get("/push/notifications", headers=headers).json["items"] == []
    assert client.get(f"/push/notifications/{messages[0].id}", headers=headers).status_code == 404


def test_scheduled_broadcasts_are_listed_and_cancelled(client, tenant, other_tenant):
    headers = tenant.service_headers()
    enroll(client, headers, 2)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    ids = [client.post("/push/broadcasts", json=broadcast_body({"everyone": True}, send_at=later), headers=headers)
           .json["broadcast_id"] for _ in range(3)]
    first = client.get("/push/broadcasts?limit=2", headers=headers).json
    rest = client.get(f"/push/broadcasts?limit=2&cursor={first['next_cursor']}", headers=headers).json
    assert [b["id"] for b in first["items"] + rest["items"]] == ids[::-1]
    assert {b["status"] for b in first["items"]} == {"scheduled"}
    assert client.delete(f"/push/broadcasts/{ids[0]}", headers=headers).json == {"status": "cancelled"}
    assert client.delete(f"/push/broadcasts/{ids[0]}", headers=headers).json == {"status": "cancelled"}
    assert client.get(f"/push/broadcasts/{ids[0]}", headers=headers).json["status"] == "cancelled"
    assert client.get("/push/broadcasts?status=cancelled", headers=headers).json["items"][0]["id"] == ids[0]
    other = other_tenant.service_headers()
    assert client.get(f"/push/broadcasts/{ids[1]}", headers=other).status_code == 404
    assert client.delete(f"/push/broadcasts/{ids[1]}", headers=other).status_code == 404
    assert client.get(f"/push/broadcasts/{ids[1]}/recipients", headers=other).status_code == 404
    assert client.get("/push/broadcasts", headers=other).json["items"] == []


def test_cancel_closes_the_deliveries_not_yet_pushed(client, tenant, session_factory):
    """What a worker has claimed finishes; pending and retrying ones end cancelled."""
    headers = tenant.service_headers()
    users = enroll(client, headers, 3)
    broadcast_id = client.post("/push/broadcasts", json=broadcast_body({"everyone": True}), headers=headers).json["broadcast_id"]
    now = datetime.now(UTC)
    with session_factory.begin() as session:
        broadcast = session.get(Broadcast, uuid.UUID(broadcast_id))
        for user, status in zip(users, ("pending", "retrying", "sending"), strict=True):
            device = Device(app_id=tenant.id, user_id=uuid.UUID(user), platform="android", token=f"t-{user}",
                            token_hash=user.replace("-", ""))
            session.add(device)
            session.flush()
            session.add(Delivery(notification_id=broadcast.notification_id, device_id=device.id, user_id=device.user_id,
                                 platform="android", status=status, claimed_at=now))
    assert client.delete(f"/push/broadcasts/{broadcast_id}", headers=headers).json == {"status": "cancelled"}
    found = client.get(f"/push/broadcasts/{broadcast_id}", headers=headers).json
    assert (found["counts"]["cancelled"], found["counts"]["sending"]) == (2, 1)
    page = client.get(f"/push/broadcasts/{broadcast_id}/recipients?user_id={users[2]}", headers=headers).json
    assert [(r["user_id"], r["status"]) for r in page["items"]] == [(users[2], "sending")]
    assert client.get(f"/push/broadcasts/{broadcast_id}/recipients?status=cancelled", headers=headers).json["items"][0]["status"] == "cancelled"
