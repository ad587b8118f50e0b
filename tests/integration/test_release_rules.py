"""Releasing due work: bounded per run, oldest first; due retries by the scheduler's tick.

Rules on a real database, without Celery (the worker flow is in tests/e2e/test_retry_release.py).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from shared.clock import utcnow
from shared.db import session_scope
from shared.models import Delivery
from shared.pipeline.fanout import fan_out
from shared.pipeline.sweep import release_due_deliveries, release_due_retries
from shared.services.devices import register_device
from shared.services.sends import SendRequest, create_notifications

LEASE = 300


def ios_token() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def fanned_out(tenant, session_factory, count: int, ttl: int = 600) -> list[uuid.UUID]:
    """``count`` notifications, one iOS device each, fanned out; their delivery ids in creation order."""
    users = [uuid.uuid4() for _ in range(count)]
    tenant.enroll(*users)
    with session_scope(session_factory) as session:
        for user in users:
            register_device(session, app_id=tenant.id, user_id=user, platform="ios", push_token=ios_token())
        ids = create_notifications(session, tenant.id, [SendRequest(user_id=u, title="t", body="b", ttl=ttl) for u in users],
                                   default_ttl=600, enqueue=lambda ids: None).notification_ids
    with session_scope(session_factory) as session:
        fan_out(session, ids, utcnow(), {"ios"}, 100)
        return list(session.scalars(select(Delivery.id).where(Delivery.notification_id.in_(ids))
                                    .order_by(Delivery.notification_id)))


def released_ids(chunks) -> list[uuid.UUID]:
    return [i for chunk in chunks for i in chunk.delivery_ids]


def set_due_times(session_factory, delivery_ids, column: str, status: str, start) -> None:
    """Make the deliveries due in the given order: the first the longest ago."""
    with session_scope(session_factory) as session:
        for age, delivery_id in enumerate(reversed(delivery_ids)):
            session.execute(update(Delivery).where(Delivery.id == delivery_id)
                            .values(status=status, **{column: start - timedelta(seconds=age + 1)}))


@pytest.mark.parametrize(("status", "column"), [("retrying", "next_attempt_at"), ("pending", "updated_at"),
                                                ("sending", "claimed_at")])
def test_one_sweep_releases_at_most_the_bound_per_kind_oldest_first_and_the_next_the_rest(
    tenant, session_factory, status, column
):
    ids = fanned_out(tenant, session_factory, 5)
    now = utcnow() + timedelta(seconds=LEASE + 120)  # every kind due: retries, lost enqueues, leases run out
    set_due_times(session_factory, ids, column, status, now - timedelta(seconds=LEASE + 60))
    with session_scope(session_factory) as session:
        first = released_ids(release_due_deliveries(session, now, 60, LEASE, 100, limit=3))
    assert sorted(first) == sorted(ids[:3])  # the three due longest ago
    with session_scope(session_factory) as session:
        assert sorted(released_ids(release_due_deliveries(session, now, 60, LEASE, 100, limit=3))) == sorted(ids[3:])
    with session_scope(session_factory) as session:
        assert release_due_deliveries(session, now, 60, LEASE, 100, limit=3) == []  # released ones wait their turn
        assert set(session.scalars(select(Delivery.status))) == {"pending"}


def test_the_bound_is_per_kind(tenant, session_factory):
    ids = fanned_out(tenant, session_factory, 6)
    now = utcnow() + timedelta(seconds=LEASE + 120)
    set_due_times(session_factory, ids[:2], "next_attempt_at", "retrying", now)
    set_due_times(session_factory, ids[2:4], "updated_at", "pending", now - timedelta(seconds=120))
    set_due_times(session_factory, ids[4:], "claimed_at", "sending", now - timedelta(seconds=LEASE + 10))
    with session_scope(session_factory) as session:
        assert sorted(released_ids(release_due_deliveries(session, now, 60, LEASE, 100, limit=2))) == sorted(ids)


def test_the_retry_tick_releases_due_retries_only(tenant, session_factory):
    """Due retries, bounded, longest due first; never a retry not yet due, never pending work waiting in its queue."""
    ids = fanned_out(tenant, session_factory, 5)
    # The tick's clock, two hours ahead: the suite's running worker (real time) finds none of these due,
    # neither the retries nor the "long ago" pending one, so it cannot release or sweep them first.
    now = utcnow() + timedelta(hours=2)
    set_due_times(session_factory, ids[:3], "next_attempt_at", "retrying", now)
    with session_scope(session_factory) as session:
        session.execute(update(Delivery).where(Delivery.id == ids[3])
                        .values(status="retrying", next_attempt_at=now + timedelta(seconds=5)))
        # ids[4] stays pending, enqueued long ago: work waiting in a deep queue is the sweep's business.
        session.execute(update(Delivery).where(Delivery.id == ids[4]).values(updated_at=now - timedelta(hours=1)))
    with session_scope(session_factory) as session:
        assert released_ids(release_due_retries(session, now, 100, limit=2)) == ids[:2]
    with session_scope(session_factory) as session:
        assert released_ids(release_due_retries(session, now, 100, limit=2)) == ids[2:3]
    with session_scope(session_factory) as session:
        assert release_due_retries(session, now, 100, limit=2) == []
        assert session.get(Delivery, ids[3]).status == "retrying"
        assert session.get(Delivery, ids[4]).updated_at < now - timedelta(minutes=59)
    with session_scope(session_factory) as session:
        assert released_ids(release_due_retries(session, now + timedelta(seconds=5), 100)) == ids[3:4]
