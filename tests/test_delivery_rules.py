"""The delivery pipeline's rules, on a real database, without Celery."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.delivery import (
    RetryPolicy,
    aggregate_status,
    claim_deliveries,
    fan_out,
    record_outcomes,
    release_due_deliveries,
    stale_queued_notifications,
)
from shared.models import Delivery, Device, Notification, utcnow
from shared.outcomes import Outcome
from shared.payloads import PayloadTooLarge, fit_body
from shared.services.devices import register_device
from shared.services.sends import SendRequest, create_notifications

POLICY = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=10)


def ios_token() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


@pytest.fixture
def notification_with_devices(tenant, session_factory):
    """A notification for a user with two iOS devices, fanned out; returns (notification id, delivery ids)."""
    user = uuid.uuid4()
    tenant.enroll(user)
    with session_scope(session_factory) as session:
        for _ in range(2):
            register_device(session, app_id=tenant.id, user_id=user, platform="ios", push_token=ios_token())
        (notification_id,) = create_notifications(
            session, tenant.id, [SendRequest(user_id=user, title="t", body="b", ttl=600)], default_ttl=600, enqueue=lambda ids: None
        ).notification_ids
    with session_scope(session_factory) as session:
        groups = fan_out(session, notification_id, utcnow(), {"ios"})
    return notification_id, groups["ios"]


def test_fan_out_twice_creates_deliveries_once(notification_with_devices, session_factory):
    notification_id, delivery_ids = notification_with_devices
    with session_scope(session_factory) as session:
        again = fan_out(session, notification_id, utcnow(), {"ios"})
    assert sorted(again["ios"]) == sorted(delivery_ids)
    with session_scope(session_factory) as session:
        assert len(session.scalars(select(Delivery)).all()) == 2
        assert session.get(Notification, notification_id).status == "sending"


def test_a_delivery_is_claimed_once(notification_with_devices, session_factory):
    _, delivery_ids = notification_with_devices
    now = utcnow()
    with session_scope(session_factory) as first, session_scope(session_factory) as second:
        claimed = claim_deliveries(first, delivery_ids, now, lease_seconds=300)
        first.commit()
        assert claim_deliveries(second, delivery_ids, now, lease_seconds=300) == []
    assert sorted(c.delivery_id for c in claimed) == sorted(delivery_ids)
    assert all(c.attempts == 1 for c in claimed)


def test_an_expired_lease_makes_a_claim_available_again(notification_with_devices, session_factory):
    _, delivery_ids = notification_with_devices
    now = utcnow()
    with session_scope(session_factory) as session:
        claim_deliveries(session, delivery_ids, now, lease_seconds=300)
    with session_scope(session_factory) as session:
        assert release_due_deliveries(session, now + timedelta(seconds=10), 60, 300) == {}
    with session_scope(session_factory) as session:
        released = release_due_deliveries(session, now + timedelta(seconds=301), 60, 300)
    assert sorted(released["ios"]) == sorted(delivery_ids)


def test_expired_in_the_queue_is_never_claimed(notification_with_devices, session_factory):
    notification_id, delivery_ids = notification_with_devices
    later = utcnow() + timedelta(seconds=601)
    with session_scope(session_factory) as session:
        assert claim_deliveries(session, delivery_ids, later, lease_seconds=300) == []
    with session_scope(session_factory) as session:
        assert {d.status for d in session.scalars(select(Delivery))} == {"expired"}
        assert session.get(Notification, notification_id).status == "expired"


def test_outcomes_are_recorded_and_status_aggregated(notification_with_devices, session_factory):
    notification_id, delivery_ids = notification_with_devices
    now = utcnow()
    with session_scope(session_factory) as session:
        first, second = claim_deliveries(session, delivery_ids, now, 300)
    with session_scope(session_factory) as session:
        record_outcomes(session, [(first, Outcome.sent("id-1")), (second, Outcome.retry("503", retry_after=5))], now, POLICY)
    with session_scope(session_factory) as session:
        retrying = session.get(Delivery, second.delivery_id)
        assert retrying.status == "retrying"
        assert retrying.next_attempt_at >= now + timedelta(seconds=5)
        assert session.get(Notification, notification_id).status == "sending"
        assert release_due_deliveries(session, now + timedelta(seconds=4), 60, 300) == {}
    with session_scope(session_factory) as session:
        assert release_due_deliveries(session, retrying.next_attempt_at, 60, 300) == {"ios": [second.delivery_id]}
    with session_scope(session_factory) as session:
        (again,) = claim_deliveries(session, [second.delivery_id], now, 300)
        assert again.attempts == 2
        record_outcomes(session, [(again, Outcome.dead_token("Unregistered"))], now, POLICY)
    with session_scope(session_factory) as session:
        assert session.get(Notification, notification_id).status == "partially_delivered"
        device = session.get(Device, second.device_id)
        assert device.disabled_at is not None and device.disabled_reason == "Unregistered"


def test_dead_token_does_not_disable_a_device_re_registered_with_a_new_token(notification_with_devices, session_factory, tenant):
    _, delivery_ids = notification_with_devices
    now = utcnow()
    with session_scope(session_factory) as session:
        claimed = claim_deliveries(session, delivery_ids[:1], now, 300)[0]
        device = session.get(Device, claimed.device_id)
        device.token_hash = "0" * 64  # the device got a new token meanwhile
    with session_scope(session_factory) as session:
        record_outcomes(session, [(claimed, Outcome.dead_token("Unregistered"))], now, POLICY)
    with session_scope(session_factory) as session:
        assert session.get(Device, claimed.device_id).disabled_at is None


def test_stale_queued_notifications_are_found(tenant, session_factory):
    user = uuid.uuid4()
    tenant.enroll(user)
    with session_scope(session_factory) as session:
        (notification_id,) = create_notifications(
            session, tenant.id, [SendRequest(user_id=user, title="t", body="b")], default_ttl=600, enqueue=lambda ids: None
        ).notification_ids
    with session_scope(session_factory) as session:
        assert stale_queued_notifications(session, utcnow(), 60) == []
        assert stale_queued_notifications(session, utcnow() + timedelta(seconds=61), 60) == [notification_id]


@pytest.mark.parametrize(
    ("counts", "status"),
    [
        ({}, "no_devices"),
        ({"sent": 2}, "delivered"),
        ({"sent": 1, "dead_token": 1}, "partially_delivered"),
        ({"sent": 1, "retrying": 1}, "sending"),
        ({"rejected": 1, "failed": 1}, "failed"),
        ({"expired": 2}, "expired"),
        ({"expired": 1, "failed": 1}, "failed"),
    ],
)
def test_aggregate_status(counts, status):
    assert aggregate_status(counts) == status


def test_backoff_is_jittered_capped_and_floored_by_retry_after():
    rng = random.Random(7)
    policy = RetryPolicy(max_attempts=10, base_seconds=2, max_seconds=30)
    delays = [policy.delay(attempt, None, rng) for attempt in range(1, 10) for _ in range(50)]
    assert 0 <= min(delays) and max(delays) <= 30
    assert max(policy.delay(1, None, rng) for _ in range(200)) <= 2
    assert min(policy.delay(1, 45, rng) for _ in range(200)) >= 45


def test_fit_body_cuts_at_a_character_boundary_with_an_ellipsis():
    def build(body: str) -> bytes:
        return ('{"t":"x","b":"' + body + '"}').encode()

    payload, truncated = fit_body(build, "ü" * 100, 60)
    assert truncated and len(payload) <= 60
    assert payload.decode().endswith('…"}')
    assert fit_body(build, "short", 60) == (build("short"), False)
    with pytest.raises(PayloadTooLarge):
        fit_body(lambda body: b"x" * 100 + body.encode(), "abc", 60)
