"""ttl 0 is the vendors' "deliver now or drop it": pushed once, as soon as a worker reaches it, never retried.

Rules on a real database, without Celery (the HTTP + worker flow on every platform is in
tests/e2e/test_e2e_platforms.py; a short ttl that ran out before fan-out in tests/integration/test_delivery_rules.py).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select

from shared.clock import utcnow
from shared.db import session_scope
from shared.models import Delivery, Notification
from shared.outcomes import Outcome
from shared.pipeline.claim import claim_chunk
from shared.pipeline.fanout import fan_out
from shared.pipeline.record import record_outcomes
from shared.pipeline.values import RetryPolicy
from shared.services.devices import register_device
from shared.services.sends import SendRequest, create_notifications

POLICY = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=10)
LEASE = 300


def ttl_0_delivery(tenant, session_factory) -> uuid.UUID:
    """A ttl-0 notification to a user with one iOS device, fanned out a while after it was accepted."""
    user = uuid.uuid4()
    tenant.enroll(user)
    with session_scope(session_factory) as session:
        register_device(session, app_id=tenant.id, user_id=user, platform="ios",
                        push_token=uuid.uuid4().hex + uuid.uuid4().hex)
        (notification_id,) = create_notifications(
            session, tenant.id, [SendRequest(user_id=user, title="t", body="b", ttl=0)], default_ttl=600,
            enqueue=lambda ids: None).notification_ids
    with session_scope(session_factory) as session:
        fan_out(session, [notification_id], utcnow() + timedelta(seconds=1), {"ios"}, 100)
        return session.scalars(select(Delivery.id).where(Delivery.notification_id == notification_id)).one()


def test_ttl_0_is_claimed_once_however_long_it_waited_and_never_retried(tenant, session_factory):
    delivery_id = ttl_0_delivery(tenant, session_factory)
    later = utcnow() + timedelta(seconds=30)  # it waited in pushq's queue: still its first attempt
    with session_scope(session_factory) as session:
        held = claim_chunk(session, [delivery_id], later, LEASE, POLICY.max_attempts)
    (claimed,) = held.deliveries
    assert claimed.message.ttl == 0 and claimed.message.remaining_ttl(later) == 0
    with session_scope(session_factory) as session:
        record_outcomes(session, held.token, [(claimed, Outcome.retry("push service answered 503"))], later, POLICY)
    with session_scope(session_factory) as session:
        row = session.get(Delivery, delivery_id)
        assert (row.status, row.last_error) == ("expired", "ttl 0, not retried: push service answered 503")
        assert session.get(Notification, row.notification_id).status == "expired"


def test_ttl_0_whose_worker_died_mid_push_is_not_pushed_again(tenant, session_factory):
    delivery_id = ttl_0_delivery(tenant, session_factory)
    now = utcnow()
    with session_scope(session_factory) as session:
        assert claim_chunk(session, [delivery_id], now, LEASE, POLICY.max_attempts).deliveries
    later = now + timedelta(seconds=LEASE + 1)
    with session_scope(session_factory) as session:
        result = claim_chunk(session, [delivery_id], later, LEASE, POLICY.max_attempts)
    assert result.deliveries == [] and result.closed == 1
    with session_scope(session_factory) as session:
        assert session.get(Delivery, delivery_id).status == "expired"
