"""Outcome webhooks: the endpoint's API, and events written with the state change they report (outbox)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from shared.clock import utcnow
from shared.db import session_scope
from shared.models import Notification, WebhookEvent
from shared.pipeline.fanout import fan_out
from shared.pipeline.record import disable_devices
from shared.pipeline.status import refresh_statuses
from shared.services import webhooks
from shared.services.devices import disable_devices_over_limit
from tests.support.builders import add_device, add_notification

URL = "http://127.0.0.1:9/hook"  # loopback http: PUSHQ_ALLOW_HTTP_ENDPOINTS is on in the tests


def events(session_factory, app_id) -> list[WebhookEvent]:
    with session_factory() as session:
        return list(session.scalars(select(WebhookEvent).where(WebhookEvent.app_id == app_id)
                                    .order_by(WebhookEvent.created_at)))


def subscribe(client, tenant, url: str = URL) -> dict:
    response = client.put("/push/webhook", json={"url": url}, headers=tenant.service_headers())
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_endpoint_lifecycle_through_the_api(client, tenant, other_tenant):
    headers = tenant.service_headers()
    assert client.get("/push/webhook", headers=headers).status_code == 404
    created = subscribe(client, tenant)
    assert created["secret"].startswith("whsec_") and created["url"] == URL
    assert created["events"] == {"pending": 0, "delivered": 0, "failed": 0}
    changed = subscribe(client, tenant, "http://localhost:8/other")
    assert "secret" not in changed  # shown once, when made
    shown = client.get("/push/webhook", headers=headers).get_json()
    assert shown["url"] == "http://localhost:8/other" and "secret" not in shown
    assert shown["previous_secret_expires_at"] is None
    rotated = client.post("/push/webhook/rotate-secret", headers=headers).get_json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    assert rotated["previous_secret_expires_at"] is not None
    # Another app sees nothing of it.
    assert client.get("/push/webhook", headers=other_tenant.service_headers()).status_code == 404
    assert client.delete("/push/webhook", headers=headers).get_json() == {"status": "ok"}
    assert client.get("/push/webhook", headers=headers).get_json()["error"] == "webhook_not_configured"


@pytest.mark.parametrize("url", [
    "https://10.0.0.1/hook", "https://127.0.0.1/hook", "https://[::1]/hook", "https://example.com:8443/hook",
    "http://example.com/hook", "https://user:pw@example.com/hook", "ftp://example.com/", "https://0x7f000001/",
])
def test_endpoint_urls_the_egress_rules_refuse(client, tenant, url):
    response = client.put("/push/webhook", json={"url": url}, headers=tenant.service_headers())
    assert response.status_code == 400
    assert response.get_json()["error"] == "webhook_url_refused"


def test_no_endpoint_no_events(session_factory, tenant):
    user = uuid.uuid4()
    with session_scope(session_factory) as session:
        notification = add_notification(session, tenant.id, user, "queued", 0)
    with session_scope(session_factory) as session:
        fan_out(session, [notification], utcnow(), {"web"}, 100)
    assert events(session_factory, tenant.id) == []


def test_notification_completed_once_with_outcomes(client, session_factory, tenant):
    subscribe(client, tenant)
    user = uuid.uuid4()
    with session_scope(session_factory) as session:
        device = add_device(session, tenant.id, user)
        notification = add_notification(session, tenant.id, user, "sending", 0, devices=[device])
    with session_scope(session_factory) as session:
        refresh_statuses(session, [notification], utcnow())
    with session_scope(session_factory) as session:
        refresh_statuses(session, [notification], utcnow())  # already final: no second event
    (event,) = events(session_factory, tenant.id)
    assert event.event_type == "notification.completed" and event.status == "pending"
    assert event.payload["notification_id"] == str(notification)
    assert event.payload["status"] == "delivered" and event.payload["user_id"] == str(user)
    (outcome,) = event.payload["deliveries"]
    assert outcome["device_id"] == str(device.id) and outcome["status"] == "sent"


def test_no_devices_at_fan_out_completes(client, session_factory, tenant):
    subscribe(client, tenant)
    with session_scope(session_factory) as session:
        notification = add_notification(session, tenant.id, uuid.uuid4(), "queued", 0)
    with session_scope(session_factory) as session:
        fan_out(session, [notification], utcnow(), {"web"}, 100)
    (event,) = events(session_factory, tenant.id)
    assert event.payload["status"] == "no_devices" and event.payload["deliveries"] == []


def test_rolled_back_change_emits_nothing(client, session_factory, tenant):
    subscribe(client, tenant)
    user = uuid.uuid4()
    with session_scope(session_factory) as session:
        device = add_device(session, tenant.id, user)
        notification = add_notification(session, tenant.id, user, "sending", 0, devices=[device])
    with session_factory() as session:
        refresh_statuses(session, [notification], utcnow())
        session.rollback()
    assert events(session_factory, tenant.id) == []
    with session_factory() as session:
        assert session.get(Notification, notification).status == "sending"


def test_device_disabled_dead_token_and_device_limit(client, session_factory, tenant):
    subscribe(client, tenant)
    user = uuid.uuid4()
    with session_scope(session_factory) as session:
        dead = add_device(session, tenant.id, user, last_seen_days_ago=2)
        old = add_device(session, tenant.id, user, last_seen_days_ago=1)
        kept = add_device(session, tenant.id, user)
    with session_scope(session_factory) as session:
        disable_devices(session, [(dead.id, dead.token_hash, "push service answered 410")], utcnow())
    with session_scope(session_factory) as session:
        disable_devices_over_limit(session, tenant.id, user, keep=kept.id, max_devices=1, now=utcnow())
    found = [(e.event_type, e.payload["device_id"], e.payload["reason"]) for e in events(session_factory, tenant.id)]
    assert found == [("device.disabled", str(dead.id), "dead_token"), ("device.disabled", str(old.id), "device_limit")]
    payload = events(session_factory, tenant.id)[0].payload
    assert payload["user_id"] == str(user) and payload["platform"] == "web"


def test_emit_event_for_other_rules(client, session_factory, tenant, other_tenant):
    subscribe(client, tenant)
    with session_scope(session_factory) as session:
        assert webhooks.emit_event(session, tenant.id, "broadcast.completed", {"broadcast_id": "b", "counts": {}})
        assert not webhooks.emit_event(session, other_tenant.id, "broadcast.completed", {"broadcast_id": "b"})
    (event,) = events(session_factory, tenant.id)
    assert event.event_type == "broadcast.completed" and event.payload == {"broadcast_id": "b", "counts": {}}


def test_events_listed_with_attempts(client, session_factory, tenant):
    subscribe(client, tenant)
    with session_scope(session_factory) as session:
        webhooks.emit_event(session, tenant.id, "broadcast.completed", {"broadcast_id": "b"})
    page = client.get("/push/webhook/events", headers=tenant.service_headers()).get_json()
    (item,) = page["items"]
    assert item["id"].startswith("msg_") and item["type"] == "broadcast.completed" and item["attempts"] == 0
    assert item["status"] == "pending" and page["next_cursor"] is None
    assert client.get("/push/webhook", headers=tenant.service_headers()).get_json()["events"]["pending"] == 1
    assert client.get("/push/webhook/events?cursor=nope", headers=tenant.service_headers()).status_code == 400


def test_device_disabled_by_an_outcome_says_why(client, session_factory, tenant):
    """record_outcomes: a dead token is dead_token, an endpoint the egress rules now refuse is egress_refused."""
    from datetime import timedelta

    from shared.outcomes import Outcome
    from shared.pipeline.record import record_outcomes
    from shared.pipeline.values import RetryPolicy
    from tests.support.helpers import claimed_delivery

    subscribe(client, tenant)
    user = uuid.uuid4()
    with session_scope(session_factory) as session:
        dead, refused = add_device(session, tenant.id, user), add_device(session, tenant.id, user)
        notification = add_notification(session, tenant.id, user, "sending", 0, devices=[dead, refused])
    results = [
        (claimed_delivery(device.token, "web", expires_at=utcnow() + timedelta(hours=1), device_id=device.id,
                          token_hash=device.token_hash, notification_id=notification, app_id=tenant.id), outcome)
        for device, outcome in ((dead, Outcome.dead_token("push service answered 410: subscription gone")),
                                (refused, Outcome.rejected("endpoint refused by the egress rules: endpoint must be "
                                                           "an https URL", disable_device=True)))
    ]
    with session_scope(session_factory) as session:
        record_outcomes(session, uuid.uuid4(), results, utcnow(), RetryPolicy())
    reasons = {e.payload["device_id"]: (e.payload["reason"], e.payload["detail"])
               for e in events(session_factory, tenant.id) if e.event_type == "device.disabled"}
    assert reasons == {str(dead.id): ("dead_token", "push service answered 410: subscription gone"),
                       str(refused.id): ("egress_refused", "endpoint refused by the egress rules: endpoint must be "
                                                            "an https URL")}
