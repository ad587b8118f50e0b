"""Housekeeping jobs (bounded batches), their settings, and the scheduler's entries for them."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from shared.clock import utcnow
from shared.config import ConfigError, Settings
from shared.db import session_scope
from shared.models import Delivery, Device, Notification, OAuthClient
from shared.services import housekeeping
from shared.services.clients import create_client, revoke_client
from tests.support.builders import add_device, add_notification
from tests.support.harness import TEST_ENV


def _notification_rows(session) -> dict[uuid.UUID, int]:
    """Every notification left, with how many deliveries it still has."""
    counts = dict(session.execute(select(Delivery.notification_id, func.count()).group_by(Delivery.notification_id)).all())
    return {notification_id: counts.get(notification_id, 0) for notification_id in session.scalars(select(Notification.id))}


def test_old_final_notifications_go_with_their_deliveries_in_batches(session_factory, tenant):
    user = uuid.uuid4()
    with session_scope(session_factory) as session:
        device = add_device(session, tenant.id, user)
        old = [add_notification(session, tenant.id, user, status, 40, [device])
               for status in ("delivered", "partially_delivered", "failed", "expired", "no_devices")]
        kept = {
            add_notification(session, tenant.id, user, "delivered", 10, [device]): 1,  # young
            add_notification(session, tenant.id, user, "scheduled", 40): 0,  # not final: never deleted
            add_notification(session, tenant.id, user, "queued", 40): 0,
            add_notification(session, tenant.id, user, "sending", 40, [device]): 1,
        }
    policy = housekeeping.HousekeepingPolicy(retention_days=30, device_idle_days=0, revoked_client_days=0,
                                             batch_size=2, max_batches=2)
    report = housekeeping.run(session_factory, utcnow(), policy)
    assert report.notifications_deleted == 4 and report.batches["notifications"] == 2  # bounded per run
    with session_scope(session_factory) as session:
        left = _notification_rows(session)
    (carried_over,) = set(left) - set(kept)  # one old one waits for the next run, with its delivery
    assert carried_over in old and left == {**kept, carried_over: 1}
    report = housekeeping.run(session_factory, utcnow(), policy)
    assert report.notifications_deleted == 1
    with session_scope(session_factory) as session:
        assert _notification_rows(session) == kept  # the survivors keep their deliveries
        assert session.scalar(select(func.count()).select_from(Delivery).where(Delivery.notification_id.in_(old))) == 0
        assert session.get(Device, device.id).disabled_at is None  # deliveries go, not the device


def test_idle_devices_are_disabled_and_long_revoked_clients_deleted(session_factory, tenant):
    user = uuid.uuid4()
    with session_scope(session_factory) as session:
        idle = add_device(session, tenant.id, user, last_seen_days_ago=100).id
        active = add_device(session, tenant.id, user, last_seen_days_ago=10).id
        old_client, _ = create_client(session, tenant.id, ["push:send"])
        recent_client, _ = create_client(session, tenant.id, ["push:send"])
        live_client, _ = create_client(session, tenant.id, ["push:send"])
        revoke_client(session, old_client)
        revoke_client(session, recent_client)
        session.get(OAuthClient, old_client).revoked_at = utcnow() - timedelta(days=31)
    policy = housekeeping.HousekeepingPolicy(retention_days=0, device_idle_days=90, revoked_client_days=30)
    report = housekeeping.run(session_factory, utcnow(), policy)
    assert (report.devices_disabled, report.clients_deleted, report.notifications_deleted) == (1, 1, 0)
    with session_scope(session_factory) as session:
        assert session.get(Device, idle).disabled_reason == "idle: not seen for 90 days"
        assert session.get(Device, active).disabled_at is None
        assert set(session.scalars(select(OAuthClient.client_id))) == {recent_client, live_client}


def test_zero_days_turns_a_job_off(session_factory, tenant):
    with session_scope(session_factory) as session:
        notification = add_notification(session, tenant.id, uuid.uuid4(), "failed", 400)
        device = add_device(session, tenant.id, uuid.uuid4(), last_seen_days_ago=400).id
        client, _ = create_client(session, tenant.id, ["push:send"])
        revoke_client(session, client)
        session.get(OAuthClient, client).revoked_at = utcnow() - timedelta(days=400)
    off = housekeeping.HousekeepingPolicy(retention_days=0, device_idle_days=0, revoked_client_days=0)
    assert housekeeping.run(session_factory, utcnow(), off) == housekeeping.HousekeepingReport()
    with session_scope(session_factory) as session:  # the rows themselves are untouched
        assert set(session.scalars(select(Notification.id))) == {notification}
        assert session.get(Device, device).disabled_at is None
        assert set(session.scalars(select(OAuthClient.client_id))) == {client}


def test_settings_and_beat_schedule():
    settings = Settings.from_env(TEST_ENV)
    assert (settings.schedule_interval_seconds, settings.retention_days, settings.device_idle_days) == (1.0, 30, 270)
    for bad in ({"PUSHQ_SCHEDULE_INTERVAL": "0"}, {"PUSHQ_RETENTION_DAYS": "-1"},
                {"PUSHQ_HOUSEKEEPING_BATCH_SIZE": "0"},
                # a revoked client deleted while one of its tokens still verifies would un-revoke it
                {"PUSHQ_REVOKED_CLIENT_DAYS": "1", "PUSHQ_TOKEN_LIFETIME_SECONDS": "90000"}):
        with pytest.raises(ConfigError):
            Settings.from_env({**TEST_ENV, **bad})
    from broker.celery_app import make_celery
    from broker.queues import HOUSEKEEPING_TASK, MAINTENANCE_QUEUE, RELEASE_SCHEDULED_TASK

    celery = make_celery(settings.replace(housekeeping_interval_seconds=600.0))
    schedule = {entry["task"]: entry["schedule"] for entry in celery.conf.beat_schedule.values()}
    assert schedule[RELEASE_SCHEDULED_TASK] == 1.0 and schedule[HOUSEKEEPING_TASK] == 600.0
    assert celery.conf.task_routes[RELEASE_SCHEDULED_TASK] == {"queue": MAINTENANCE_QUEUE}


def test_old_webhook_events_go_once_final(session_factory, tenant):
    from datetime import timedelta

    from shared.models import WebhookEvent

    now = utcnow()
    with session_scope(session_factory) as session:
        for status, age in (("delivered", 40), ("failed", 40), ("pending", 40), ("delivered", 10)):
            session.add(WebhookEvent(app_id=tenant.id, event_type="device.disabled", payload={}, status=status,
                                     attempts=1, next_attempt_at=now, created_at=now - timedelta(days=age)))
    policy = housekeeping.HousekeepingPolicy(retention_days=30, device_idle_days=0, revoked_client_days=0)
    assert housekeeping.run(session_factory, now, policy).webhook_events_deleted == 2
    with session_scope(session_factory) as session:
        left = sorted((e.status, (now - e.created_at).days) for e in session.scalars(select(WebhookEvent)))
    assert left == [("delivered", 10), ("pending", 40)]  # young, or still to be delivered
