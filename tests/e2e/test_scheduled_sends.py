"""Scheduled sends through the API and the real worker + scheduler: never before send_at, within 5 s after it,
never once cancelled; the TTL counts from send_at; the quota is taken on the day of the request."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text

from shared.clock import utcnow
from shared.db import session_scope
from shared.models import Notification
from shared.services import scheduled
from shared.services.sends import SendRequest, create_notifications
from tests.support.flows import register_web
from tests.support.harness import TEST_ENV
from tests.support.helpers import wait_for


def iso(moment: datetime) -> str:
    return moment.isoformat()


def test_scheduled_send_goes_out_after_send_at_and_a_cancelled_one_never(api, worker, tenant, push_service):
    user = uuid.uuid4()
    tenant.enroll(user)
    subscription = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    register_web(api, tenant, user, subscription)
    send_at = datetime.now(UTC) + timedelta(seconds=3)
    headers = tenant.service_headers()
    kept = api.post("/push/send", json={"user_id": str(user), "title": "Later", "body": "on time", "ttl": 600,
                                        "send_at": iso(send_at)}, headers=headers)
    dropped = api.post("/push/send", json={"user_id": str(user), "title": "Never", "body": "cancelled",
                                           "send_at": iso(send_at)}, headers=headers)
    assert kept.status_code == dropped.status_code == 200, kept.text + dropped.text
    kept_id, dropped_id = kept.json()["notification_id"], dropped.json()["notification_id"]

    scheduled_view = api.get(f"/push/notifications/{kept_id}", headers=headers).json()
    assert scheduled_view["status"] == "scheduled" and scheduled_view["deliveries"] == []
    assert datetime.fromisoformat(scheduled_view["send_at"]) == send_at
    # The TTL counts from send_at.
    assert datetime.fromisoformat(scheduled_view["expires_at"]) == send_at + timedelta(seconds=600)

    cancel = api.delete(f"/push/notifications/{dropped_id}", headers=headers)
    assert cancel.status_code == 200 and cancel.json() == {"status": "cancelled"}
    assert api.delete(f"/push/notifications/{dropped_id}", headers=headers).json() == {"status": "cancelled"}

    def delivered():
        body = api.get(f"/push/notifications/{kept_id}", headers=headers).json()
        return body if body["status"] == "delivered" else None

    notification = wait_for(delivered, timeout=15)
    (message,) = push_service.messages(subscription)
    assert message.json()["title"] == "Later"
    assert send_at.timestamp() <= message.received_at <= send_at.timestamp() + 5
    sent_at = datetime.fromisoformat(notification["deliveries"][0]["sent_at"])
    assert send_at <= sent_at <= send_at + timedelta(seconds=5)
    assert 590 < message.ttl <= 600  # what remains of a TTL that started at send_at

    # Released: no longer cancellable. The cancelled one stays cancelled and is never pushed.
    conflict = api.delete(f"/push/notifications/{kept_id}", headers=headers)
    assert conflict.status_code == 409 and conflict.json()["error"] == "notification_not_cancellable"
    # The release that sent the kept one ran after the cancelled one's (same) send_at: it passed it over.
    dropped_view = api.get(f"/push/notifications/{dropped_id}", headers=headers).json()
    assert dropped_view["status"] == "cancelled" and dropped_view["deliveries"] == []
    assert len(push_service.messages(subscription)) == 1


def test_send_at_rules(api, tenant, other_tenant, redis_client):
    user = uuid.uuid4()
    tenant.enroll(user)
    headers = tenant.service_headers()
    body = {"user_id": str(user), "title": "t", "body": "b"}
    too_far = datetime.now(UTC) + timedelta(days=28, minutes=1)
    refused = api.post("/push/send", json={**body, "send_at": iso(too_far)}, headers=headers)
    assert refused.status_code == 400 and "send_at" in refused.json()["fields"]
    naive = api.post("/push/send", json={**body, "send_at": "2030-01-01T10:00:00"}, headers=headers)
    assert naive.status_code == 400 and "send_at" in naive.json()["fields"]
    assert redis_client.keys("pushq:quota:*") == []  # refused requests take no quota

    # Bulk and batch take send_at too; the quota is taken today, for each notification.
    later = datetime.now(UTC) + timedelta(days=3)
    bulk = api.post("/push/send/bulk", json={"user_ids": [str(user)], "title": "t", "body": "b",
                                             "send_at": iso(later)}, headers=headers)
    batch = api.post("/push/send/batch", json={"notifications": [{**body, "send_at": iso(later)}]}, headers=headers)
    assert bulk.status_code == batch.status_code == 200
    assert bulk.headers["X-Quota-Remaining"] == str(int(bulk.headers["X-Quota-Limit"]) - 1)
    assert batch.headers["X-Quota-Remaining"] == str(int(batch.headers["X-Quota-Limit"]) - 2)
    for notification_id in (*bulk.json()["notification_ids"], *batch.json()["notification_ids"]):
        assert api.get(f"/push/notifications/{notification_id}", headers=headers).json()["status"] == "scheduled"

    # A send_at in the past is "now"; another app's notification cannot be cancelled (404).
    past = api.post("/push/send", json={**body, "send_at": iso(datetime.now(UTC) - timedelta(hours=1))},
                    headers=headers)
    assert api.get(f"/push/notifications/{past.json()['notification_id']}", headers=headers).json()["status"] != "scheduled"
    foreign = api.delete(f"/push/notifications/{bulk.json()['notification_ids'][0]}", headers=other_tenant.service_headers())
    assert foreign.status_code == 404 and foreign.json()["message"] == "Notification not found"
    assert api.delete(f"/push/notifications/{uuid.uuid4()}", headers=headers).status_code == 404
    listed = api.get("/push/notifications", params={"status": "scheduled"}, headers=headers).json()["items"]
    assert len(listed) == 2 and all(item["send_at"] for item in listed)


def test_patient_send_with_send_at_answers_at_once_pending(api, tenant, push_service):
    patient, person = uuid.uuid4(), uuid.uuid4()
    tenant.enroll(person)
    subscription = push_service.new_subscription(application_server_key=tenant.vapid_public_key)
    device_id = register_web(api, tenant, person, subscription)
    headers = tenant.service_headers()
    assert api.put(f"/v1/patients/{patient}/identity", json={"person_id": str(person)}, headers=headers).status_code == 201
    started = time.monotonic()
    response = api.post("/v1/push/send", json={"patientId": str(patient), "title": "t", "body": "b",
                                               "sendAt": iso(datetime.now(UTC) + timedelta(hours=1))},
                        headers=headers)
    assert response.status_code == 200, response.text
    # No wait for the outcomes (nothing goes out before sendAt): answered before the wait's deadline.
    assert time.monotonic() - started < float(TEST_ENV["PUSHQ_FANOUT_WAIT_SECONDS"])
    assert push_service.attempts(subscription) == 0
    answer = response.json()
    assert answer["results"] == [{"subscription_id": device_id, "status": "pending", "vendor_message_id": ""}]
    status = api.get(f"/push/notifications/{answer['notification_id']}", headers=headers).json()["status"]
    assert status == "scheduled"


def test_release_is_atomic_and_ignores_cancelled_and_future(session_factory, tenant, settings):
    """Two schedulers releasing at once get disjoint sets; only due, still-scheduled notifications move."""
    user = uuid.uuid4()
    tenant.enroll(user)
    now = utcnow()
    with session_scope(session_factory) as session:
        due = create_notifications(session, tenant.id, [SendRequest(user, "t", "b", send_at=now + timedelta(seconds=1))
                                                        for _ in range(6)], default_ttl=60, enqueue=lambda ids: None)
        future = create_notifications(session, tenant.id, [SendRequest(user, "t", "b", send_at=now + timedelta(hours=1))],
                                      default_ttl=60, enqueue=lambda ids: None)
    with session_scope(session_factory) as session:
        scheduled.cancel(session, tenant.id, due.notification_ids[0], now)
    later = now + timedelta(seconds=2)
    first, second = session_factory(), session_factory()
    try:
        got_first = scheduled.release_due(first, later, limit=3)  # holds its row locks until commit
        got_second = scheduled.release_due(second, later)  # skips the locked rows
        first.commit()
        second.commit()
    finally:
        first.close()
        second.close()
    assert len(got_first) == 3 and len(got_second) == 2 and not set(got_first) & set(got_second)
    assert set(got_first) | set(got_second) == set(due.notification_ids[1:])
    with session_scope(session_factory) as session:
        statuses = dict(session.execute(select(Notification.id, Notification.status)).all())
        assert statuses[due.notification_ids[0]] == "cancelled"
        assert statuses[future.notification_ids[0]] == "scheduled"
        assert scheduled.release_due(session, later) == []


def _scheduled_one(session_factory, tenant, send_at) -> uuid.UUID:
    """A scheduled send; the races below act an hour ahead, so the suite's running scheduler never releases it."""
    user = uuid.uuid4()
    tenant.enroll(user)
    with session_scope(session_factory) as session:
        (notification_id,) = create_notifications(session, tenant.id, [SendRequest(user, "t", "b", send_at=send_at)],
                                                  default_ttl=60, enqueue=lambda ids: None).notification_ids
    return notification_id


def _waiting_on_a_lock(engine) -> bool:
    with engine.connect() as connection:
        return bool(connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )).scalar())


def test_a_cancel_racing_the_release_waits_for_it_and_is_refused(session_factory, engine, tenant):
    """The release holds the row (uncommitted) when the cancel comes: the cancel waits for it, then finds
    the notification queued and answers 409; the notification goes out, once."""
    now = utcnow() + timedelta(hours=1)  # the release's clock: the send is due for it only
    notification_id = _scheduled_one(session_factory, tenant, now)
    release = session_factory()
    outcome: list[object] = []
    try:
        assert scheduled.release_due(release, now) == [notification_id]  # its row lock held until commit

        def cancel() -> None:
            try:
                with session_scope(session_factory) as session:
                    outcome.append(scheduled.cancel(session, tenant.id, notification_id, now))
            except Exception as exc:
                outcome.append(exc)

        racer = threading.Thread(target=cancel)
        racer.start()
        wait_for(lambda: _waiting_on_a_lock(engine), timeout=30, what="the cancel to wait on the release's lock")
        release.commit()
        racer.join(timeout=30)
        assert not racer.is_alive()
    finally:
        release.close()
    (result,) = outcome
    assert isinstance(result, scheduled.NotificationNotCancellable)
    with session_scope(session_factory) as session:
        assert session.get(Notification, notification_id).status == "queued"


def test_a_release_racing_a_cancel_skips_it(session_factory, tenant):
    """The cancel holds the row (uncommitted) when the scheduler releases: the release skips it without
    waiting, and once the cancel commits no later release picks it up."""
    now = utcnow() + timedelta(hours=1)  # the release's clock: the send is due for it only
    notification_id = _scheduled_one(session_factory, tenant, now)
    cancelling = session_factory()
    try:
        assert scheduled.cancel(cancelling, tenant.id, notification_id, now) == "cancelled"
        with session_scope(session_factory) as session:
            assert scheduled.release_due(session, now) == []  # SKIP LOCKED: no wait, no release
        cancelling.commit()
    finally:
        cancelling.close()
    with session_scope(session_factory) as session:
        assert scheduled.release_due(session, now + timedelta(seconds=1)) == []
        assert session.get(Notification, notification_id).status == "cancelled"


def test_a_cancelled_send_keeps_the_quota_it_took(api, tenant, settings):
    """README: the quota is taken on the day of the request and a cancel does not give it back."""
    user = uuid.uuid4()
    tenant.enroll(user)
    headers = tenant.service_headers()
    body = {"user_id": str(user), "title": "t", "body": "b", "send_at": iso(datetime.now(UTC) + timedelta(hours=1))}
    first = api.post("/push/send", json=body, headers=headers)
    assert first.status_code == 200, first.text
    limit, remaining = int(first.headers["X-Quota-Limit"]), int(first.headers["X-Quota-Remaining"])
    assert remaining == limit - 1
    cancelled = api.delete(f"/push/notifications/{first.json()['notification_id']}", headers=headers)
    assert cancelled.status_code == 200 and cancelled.json() == {"status": "cancelled"}
    second = api.post("/push/send", json=body, headers=headers)
    assert second.status_code == 200, second.text
    assert int(second.headers["X-Quota-Remaining"]) == limit - 2
