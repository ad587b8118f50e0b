"""The delivery pipeline's rules, on a real database, without Celery.

Every rule that touches the database runs twice: on PostgreSQL (production) and on
SQLite (``make run`` with nothing configured), whose claim and outcome write take
their own, portable statements (shared/pipeline/).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, update

from shared.clock import utcnow
from shared.db import make_engine, make_session_factory, session_scope
from shared.models import Base, Delivery, Device, Notification
from shared.outcomes import Outcome
from shared.payloads import PayloadTooLarge, fit_body
from shared.pipeline.claim import claim_chunk
from shared.pipeline.fanout import fan_out
from shared.pipeline.record import record_outcomes
from shared.pipeline.sweep import release_due_deliveries, stale_queued_notifications
from shared.pipeline.values import RetryPolicy
from shared.schema import migrate
from shared.services.devices import register_device, unregister_device
from shared.services.sends import SendRequest, create_notifications
from shared.statuses import aggregate_status

POLICY = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=10)
LEASE = 300


@pytest.fixture(scope="module")
def sqlite_session_factory(tmp_path_factory: pytest.TempPathFactory):
    """A SQLite file migrated with alembic, as `pushq run` makes it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'pushq.sqlite3'}"
    migrate(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def session_factory(request: pytest.FixtureRequest, session_factory) -> Iterator:
    """The rules on both databases: the suite's PostgreSQL (truncated by conftest) or an emptied SQLite file."""
    if request.param == "postgresql":
        yield session_factory
        return
    factory = request.getfixturevalue("sqlite_session_factory")
    with session_scope(factory) as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))
    yield factory


def ios_token() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def claim(session, delivery_ids, now, max_attempts=POLICY.max_attempts):
    return claim_chunk(session, delivery_ids, now, LEASE, max_attempts)


def released_ids(chunks) -> list[uuid.UUID]:
    return sorted(i for chunk in chunks for i in chunk.delivery_ids)


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
        (chunk,) = fan_out(session, [notification_id], utcnow(), {"ios"}, 100)
    assert chunk.platform == "ios"
    return notification_id, chunk.delivery_ids


def test_fan_out_twice_creates_deliveries_once(notification_with_devices, session_factory):
    notification_id, delivery_ids = notification_with_devices
    with session_scope(session_factory) as session:
        (again,) = fan_out(session, [notification_id], utcnow(), {"ios"}, 100)
    assert sorted(again.delivery_ids) == sorted(delivery_ids)
    with session_scope(session_factory) as session:
        assert len(session.scalars(select(Delivery)).all()) == 2
        assert session.get(Notification, notification_id).status == "sending"


def test_fan_out_chunks_across_notifications_and_users_per_platform_and_app(tenant, other_tenant, session_factory):
    """A bulk's deliveries are grouped by platform and app, not by notification: 5 users x 2 devices
    with a chunk size of 4 make 3 chunks per platform, and another app's never share a chunk."""
    users = [uuid.uuid4() for _ in range(5)]
    tenant.enroll(*users)
    other_user = uuid.uuid4()
    other_tenant.enroll(other_user)
    with session_scope(session_factory) as session:
        for user in users:
            register_device(session, app_id=tenant.id, user_id=user, platform="ios", push_token=ios_token())
            register_device(session, app_id=tenant.id, user_id=user, platform="android", push_token=f"fcm-{uuid.uuid4()}")
        register_device(session, app_id=other_tenant.id, user_id=other_user, platform="ios", push_token=ios_token())
        ids = create_notifications(session, tenant.id, [SendRequest(user_id=u, title="t", body="b") for u in users],
                                   default_ttl=600, enqueue=lambda ids: None).notification_ids
        ids += create_notifications(session, other_tenant.id, [SendRequest(user_id=other_user, title="t", body="b")],
                                    default_ttl=600, enqueue=lambda ids: None).notification_ids
    with session_scope(session_factory) as session:
        chunks = fan_out(session, ids, utcnow(), {"ios", "android"}, 4)
    sizes = sorted((c.platform, len(c.delivery_ids)) for c in chunks)
    assert sizes == [("android", 1), ("android", 4), ("ios", 1), ("ios", 1), ("ios", 4)]
    with session_scope(session_factory) as session:
        app_of = dict(session.execute(select(Delivery.id, Notification.app_id).join(Notification)).all())
        assert all(len({app_of[i] for i in c.delivery_ids}) == 1 for c in chunks)
        statuses = set(session.scalars(select(Notification.status).where(Notification.id.in_(ids))))
    assert statuses == {"sending"}


def test_fan_out_marks_no_devices_and_expired(tenant, session_factory):
    with_device, without = uuid.uuid4(), uuid.uuid4()
    tenant.enroll(with_device, without)
    with session_scope(session_factory) as session:
        register_device(session, app_id=tenant.id, user_id=with_device, platform="ios", push_token=ios_token())
        lonely, short = create_notifications(
            session, tenant.id, [SendRequest(user_id=without, title="t", body="b"),
                                 SendRequest(user_id=with_device, title="t", body="b", ttl=1)],
            default_ttl=600, enqueue=lambda ids: None).notification_ids
    with session_scope(session_factory) as session:
        assert fan_out(session, [lonely, short], utcnow() + timedelta(seconds=2), {"ios"}, 100) == []
    with session_scope(session_factory) as session:
        assert session.get(Notification, lonely).status == "no_devices"
        assert session.get(Notification, short).status == "expired"
        # The ttl ran out while it waited in pushq's queue: said so on its delivery, never silently.
        (closed,) = session.scalars(select(Delivery)).all()
        assert (closed.notification_id, closed.status, closed.attempts) == (short, "expired", 0)
        assert closed.last_error == "ttl ran out in pushq's queue, before fan-out"


def test_a_delivery_is_claimed_once(notification_with_devices, session_factory):
    _, delivery_ids = notification_with_devices
    now = utcnow()
    with session_scope(session_factory) as first, session_scope(session_factory) as second:
        claimed = claim(first, delivery_ids, now)
        first.commit()
        assert claim(second, delivery_ids, now).deliveries == []
    assert sorted(c.delivery_id for c in claimed.deliveries) == sorted(delivery_ids)
    assert all(c.attempts == 1 for c in claimed.deliveries)
    assert all(c.message.title == "t" and c.message.ttl == 600 for c in claimed.deliveries)


def test_an_expired_lease_makes_a_claim_available_again(notification_with_devices, session_factory):
    _, delivery_ids = notification_with_devices
    now = utcnow()
    with session_scope(session_factory) as session:
        claim(session, delivery_ids, now)
    with session_scope(session_factory) as session:
        assert release_due_deliveries(session, now + timedelta(seconds=10), 60, LEASE, 100) == []
    with session_scope(session_factory) as session:
        released = release_due_deliveries(session, now + timedelta(seconds=301), 60, LEASE, 100)
    assert released_ids(released) == sorted(delivery_ids)


def test_expired_in_the_queue_is_never_claimed(notification_with_devices, session_factory):
    notification_id, delivery_ids = notification_with_devices
    later = utcnow() + timedelta(seconds=601)
    with session_scope(session_factory) as session:
        result = claim(session, delivery_ids, later)
    assert result.deliveries == [] and result.closed == 2
    with session_scope(session_factory) as session:
        assert {d.status for d in session.scalars(select(Delivery))} == {"expired"}
        assert session.get(Notification, notification_id).status == "expired"


def test_outcomes_are_recorded_and_status_aggregated(notification_with_devices, session_factory):
    notification_id, delivery_ids = notification_with_devices
    now = utcnow()
    with session_scope(session_factory) as session:
        held = claim(session, delivery_ids, now)
    first, second = held.deliveries
    with session_scope(session_factory) as session:
        written = record_outcomes(
            session, held.token, [(first, Outcome.sent("id-1")), (second, Outcome.retry("503", retry_after=5))], now, POLICY
        )
    assert written == 2
    with session_scope(session_factory) as session:
        retrying = session.get(Delivery, second.delivery_id)
        assert retrying.status == "retrying"
        assert retrying.next_attempt_at >= now + timedelta(seconds=5)
        assert session.get(Delivery, first.delivery_id).vendor_message_id == "id-1"
        assert session.get(Notification, notification_id).status == "sending"
        assert release_due_deliveries(session, now + timedelta(seconds=4), 60, LEASE, 100) == []
    with session_scope(session_factory) as session:
        assert released_ids(release_due_deliveries(session, retrying.next_attempt_at, 60, LEASE, 100)) == [second.delivery_id]
    with session_scope(session_factory) as session:
        again = claim(session, [second.delivery_id], now)
        assert again.deliveries[0].attempts == 2
        record_outcomes(session, again.token, [(again.deliveries[0], Outcome.dead_token("Unregistered"))], now, POLICY)
    with session_scope(session_factory) as session:
        assert session.get(Notification, notification_id).status == "partially_delivered"
        device = session.get(Device, second.device_id)
        assert device.disabled_at is not None and device.disabled_reason == "Unregistered"


def raw_outcome(outcome: Outcome, **values) -> Outcome:
    """``outcome`` with ``values`` set past its own cleaning: what an adapter building one some other
    way (or a bug) could hand to record_outcomes."""
    for name, value in values.items():
        object.__setattr__(outcome, name, value)
    return outcome


def test_one_unstorable_value_never_stops_the_chunks_other_outcomes(notification_with_devices, session_factory):
    """Issue 16 item 2: a vendor id with NUL or a lone surrogate (PostgreSQL refuses both), a delay of
    infinity (a datetime overflows) used to fail the chunk's whole write: every delivery stayed sending."""
    _, delivery_ids = notification_with_devices
    now = utcnow()
    with session_scope(session_factory) as session:
        held = claim(session, delivery_ids, now)
    first, second = held.deliveries
    sent = raw_outcome(Outcome.sent("id"), vendor_message_id="id\x00\udcff")
    retry = raw_outcome(Outcome.retry("busy"), retry_after=float("inf"), reason="busy\x00\ud800")
    with session_scope(session_factory) as session:
        assert record_outcomes(session, held.token, [(first, sent), (second, retry)], now, POLICY) == 2
    with session_scope(session_factory) as session:
        stored_sent, stored_retry = session.get(Delivery, first.delivery_id), session.get(Delivery, second.delivery_id)
        assert (stored_sent.status, stored_sent.vendor_message_id) == ("sent", "id\ufffd")
        # Infinity is clamped to a day, beyond the message's 600 s TTL: it ends expired, not stuck sending.
        assert (stored_retry.status, stored_retry.last_error) == ("expired", "ttl expires before retry: busy\ufffd")


def test_a_stale_claim_cannot_overwrite_a_newer_claims_outcome(notification_with_devices, session_factory):
    """Worker A's lease runs out, worker B claims and sends; A's late outcome must not be written."""
    _, delivery_ids = notification_with_devices
    now = utcnow()
    with session_scope(session_factory) as session:
        stale = claim(session, delivery_ids[:1], now)
    later = now + timedelta(seconds=LEASE + 1)
    with session_scope(session_factory) as session:
        fresh = claim(session, delivery_ids[:1], later)
    assert fresh.deliveries and fresh.token != stale.token
    with session_scope(session_factory) as session:
        assert record_outcomes(session, stale.token, [(stale.deliveries[0], Outcome.rejected("late"))], later, POLICY) == 0
    with session_scope(session_factory) as session:
        assert session.get(Delivery, delivery_ids[0]).status == "sending"
        record_outcomes(session, fresh.token, [(fresh.deliveries[0], Outcome.sent("b"))], later, POLICY)
    with session_scope(session_factory) as session:
        row = session.get(Delivery, delivery_ids[0])
        assert (row.status, row.vendor_message_id, row.attempts) == ("sent", "b", 2)


def test_a_retry_is_claimable_only_when_due(notification_with_devices, session_factory):
    _, delivery_ids = notification_with_devices
    now = utcnow()
    with session_scope(session_factory) as session:
        held = claim(session, delivery_ids[:1], now)
        record_outcomes(session, held.token, [(held.deliveries[0], Outcome.retry("busy", retry_after=30))], now, POLICY)
    with session_scope(session_factory) as session:
        assert claim(session, delivery_ids[:1], now + timedelta(seconds=5)).deliveries == []
    with session_scope(session_factory) as session:
        due = session.get(Delivery, delivery_ids[0]).next_attempt_at
        assert len(claim(session, delivery_ids[:1], due).deliveries) == 1


def test_max_attempts_is_enforced_at_claim_time(notification_with_devices, session_factory):
    notification_id, delivery_ids = notification_with_devices
    with session_scope(session_factory) as session:
        session.execute(update(Delivery).values(status="retrying", attempts=3, next_attempt_at=None))
    with session_scope(session_factory) as session:
        result = claim(session, delivery_ids, utcnow(), max_attempts=3)
    assert result.deliveries == [] and result.closed == 2
    with session_scope(session_factory) as session:
        assert {(d.status, d.attempts) for d in session.scalars(select(Delivery))} == {("failed", 3)}
        assert session.get(Notification, notification_id).status == "failed"


def test_a_device_unregistered_after_fan_out_is_not_pushed(notification_with_devices, session_factory, tenant):
    _notification_id, delivery_ids = notification_with_devices
    with session_scope(session_factory) as session:
        gone = session.get(Delivery, delivery_ids[0]).device_id
        unregister_device(session, gone, app_id=tenant.id)
    with session_scope(session_factory) as session:
        result = claim(session, delivery_ids, utcnow())
    assert [d.delivery_id for d in result.deliveries] == [delivery_ids[1]]
    with session_scope(session_factory) as session:
        closed = session.get(Delivery, delivery_ids[0])
        assert (closed.status, closed.last_error) == ("rejected", "device disabled before the push")


def test_dead_token_does_not_disable_a_device_re_registered_with_a_new_token(notification_with_devices, session_factory, tenant):
    _, delivery_ids = notification_with_devices
    now = utcnow()
    with session_scope(session_factory) as session:
        held = claim(session, delivery_ids[:1], now)
        device = session.get(Device, held.deliveries[0].device_id)
        device.token_hash = "0" * 64  # the device got a new token meanwhile
    with session_scope(session_factory) as session:
        record_outcomes(session, held.token, [(held.deliveries[0], Outcome.dead_token("Unregistered"))], now, POLICY)
    with session_scope(session_factory) as session:
        assert session.get(Device, held.deliveries[0].device_id).disabled_at is None


def test_mixed_outcomes_of_one_chunk_are_written_in_one_go(tenant, session_factory):
    """One chunk, four outcomes: sent, retry, dead token, rejected; each row gets its own values, only the
    dead token's device is disabled, and the notification's status counts them all."""
    user = uuid.uuid4()
    tenant.enroll(user)
    with session_scope(session_factory) as session:
        for _ in range(4):
            register_device(session, app_id=tenant.id, user_id=user, platform="ios", push_token=ios_token())
        (notification_id,) = create_notifications(
            session, tenant.id, [SendRequest(user_id=user, title="t", body="b", ttl=600)], default_ttl=600,
            enqueue=lambda ids: None).notification_ids
    with session_scope(session_factory) as session:
        (chunk,) = fan_out(session, [notification_id], utcnow(), {"ios"}, 100)
    now = utcnow()
    with session_scope(session_factory) as session:
        held = claim(session, chunk.delivery_ids, now)
    sent, retry, dead, rejected = held.deliveries
    outcomes = [(sent, Outcome.sent("vendor-1")), (retry, Outcome.retry("503", retry_after=5)),
                (dead, Outcome.dead_token("Unregistered")), (rejected, Outcome.rejected("BadTopic"))]
    with session_scope(session_factory) as session:
        assert record_outcomes(session, held.token, outcomes, now, POLICY) == 4
    with session_scope(session_factory) as session:
        rows = {d.id: d for d in session.scalars(select(Delivery))}
        assert (rows[sent.delivery_id].status, rows[sent.delivery_id].vendor_message_id,
                rows[sent.delivery_id].last_error) == ("sent", "vendor-1", None)
        assert rows[sent.delivery_id].sent_at is not None
        assert (rows[retry.delivery_id].status, rows[retry.delivery_id].last_error) == ("retrying", "503")
        assert rows[retry.delivery_id].next_attempt_at >= now + timedelta(seconds=5)
        assert (rows[dead.delivery_id].status, rows[dead.delivery_id].last_error) == ("dead_token", "Unregistered")
        assert (rows[rejected.delivery_id].status, rows[rejected.delivery_id].last_error) == ("rejected", "BadTopic")
        assert {row.vendor_message_id for row in rows.values()} == {"vendor-1", None}
        assert all(row.claim_token is None and row.claimed_at is None for row in rows.values())
        disabled = {d.id for d in session.scalars(select(Device).where(Device.disabled_at.is_not(None)))}
        assert disabled == {dead.device_id}
        assert session.get(Notification, notification_id).status == "sending"  # one delivery still retrying
    with session_scope(session_factory) as session:
        again = claim(session, [retry.delivery_id], now + timedelta(seconds=600))
    assert again.deliveries == [] and again.closed == 1  # expired meanwhile: closed at claim
    with session_scope(session_factory) as session:
        assert session.get(Notification, notification_id).status == "partially_delivered"


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
    assert min(delays) >= 0 and max(delays) <= 30
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
