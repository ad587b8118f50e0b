"""The pipeline's shape: each step costs a small constant number of SQL statements, whatever its size.

Statements are counted with a SQLAlchemy ``before_cursor_execute`` listener on a
real PostgreSQL connection. Each step runs at two sizes; the counts must be equal
and within the budget. This is a test of the shape, not a timing test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import event, insert, update

from shared import crypto
from shared.clock import utcnow
from shared.db import session_scope
from shared.models import Delivery, Device
from shared.outcomes import Outcome
from shared.pipeline.claim import claim_chunk
from shared.pipeline.fanout import fan_out
from shared.pipeline.record import record_outcomes
from shared.pipeline.sweep import release_due_deliveries, release_due_retries
from shared.pipeline.values import RetryPolicy
from shared.services.sends import SendRequest, create_notifications

POLICY = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=10)


@contextmanager
def counted(engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn, _cursor, statement, _parameters, _context, _executemany) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def add_users_with_devices(session_factory, tenant, users: int, devices_each: int) -> list[uuid.UUID]:
    user_ids = [uuid.uuid4() for _ in range(users)]
    tenant.enroll(*user_ids)
    rows = []
    for user_id in user_ids:
        for _ in range(devices_each):
            token = uuid.uuid4().hex + uuid.uuid4().hex
            rows.append({"id": uuid.uuid4(), "app_id": tenant.id, "user_id": user_id, "platform": "ios",
                         "token": token, "token_hash": crypto.token_hash(token)})
    if rows:
        with session_scope(session_factory) as session:
            session.execute(insert(Device), rows)
    return user_ids


def accept_bulk(client, tenant, user_ids) -> None:
    response = client.post("/push/send/bulk", headers=tenant.service_headers(),
                           json={"user_ids": [str(u) for u in user_ids], "title": "t", "body": "b"})
    assert response.status_code == 200, response.get_json()


def accept_quietly(session_factory, tenant, user_ids) -> list[uuid.UUID]:
    """Notifications accepted through the service layer without an enqueue: no worker may fan them out first."""
    with session_scope(session_factory) as session:
        return create_notifications(session, tenant.id, [SendRequest(user_id=u, title="t", body="b") for u in user_ids],
                                    default_ttl=600, enqueue=lambda ids: None).notification_ids


@pytest.fixture
def api_engine(flask_app):
    return flask_app.extensions["pushq"].session_factory.kw["bind"]


def test_accepting_a_bulk_costs_the_same_statements_for_50_and_500_users(client, tenant, session_factory, api_engine):
    users = add_users_with_devices(session_factory, tenant, 500, 0)
    accept_bulk(client, tenant, users[:5])  # warm: connection, caches
    counts = []
    for size in (50, 500):
        with counted(api_engine) as statements:
            accept_bulk(client, tenant, users[:size])
        counts.append(statements)
    assert counts[0] == counts[1]
    # One statement checks enrollment, inserts every row and reads the app's quota; the commit is not one here
    assert counts[1] == ["WITH"], counts[1]


def test_accepting_a_single_send_or_a_mixed_batch_is_one_statement(client, tenant, session_factory, api_engine):
    users = add_users_with_devices(session_factory, tenant, 50, 0)
    accept_bulk(client, tenant, users[:5])  # warm: connection, caches
    with counted(api_engine) as single:
        response = client.post("/push/send", headers=tenant.service_headers(),
                               json={"user_id": str(users[0]), "title": "t", "body": "b"})
        assert response.status_code == 200, response.get_json()
    batches = []
    for size in (5, 50):
        with counted(api_engine) as statements:
            response = client.post("/push/send/batch", headers=tenant.service_headers(), json={"notifications": [
                {"user_id": str(u), "title": f"t{i}", "body": "b", "data": {"n": i}} for i, u in enumerate(users[:size])]})
            assert response.status_code == 200, response.get_json()
        batches.append(statements)
    assert single == ["WITH"], single
    assert batches[0] == batches[1] == ["WITH"], batches


def fan_out_statements(engine, session_factory, ids) -> list[str]:
    with counted(engine) as statements, session_scope(session_factory) as session:
        fan_out(session, ids, utcnow(), {"ios"}, 100)
    return statements


def test_fanning_out_costs_the_same_statements_for_50_and_500_notifications(
    tenant, session_factory, engine
):
    users = add_users_with_devices(session_factory, tenant, 550, 2)
    small = accept_quietly(session_factory, tenant, users[:50])
    large = accept_quietly(session_factory, tenant, users[50:])
    small_count = fan_out_statements(engine, session_factory, small)
    large_count = fan_out_statements(engine, session_factory, large)
    assert small_count == large_count
    # lock the notifications; insert every delivery, joined to the users' devices in the database; set all statuses
    assert small_count == ["SELECT", "INSERT", "UPDATE"]
    with session_scope(session_factory) as session:
        assert session.query(Delivery).count() == 2 * 550


def deliver_chunk_statements(engine, session_factory, delivery_ids) -> list[str]:
    """Claim a chunk and write a mix of outcomes (sent, retry, dead token, rejected, truncated)."""
    with counted(engine) as statements:
        with session_scope(session_factory) as session:
            claim = claim_chunk(session, delivery_ids, utcnow(), 300, POLICY.max_attempts)
        assert len(claim.deliveries) == len(delivery_ids)
        kinds = [Outcome.sent("m", truncated=True), Outcome.retry("busy"), Outcome.dead_token("gone"),
                 Outcome.rejected("no")]
        results = [(d, kinds[i % len(kinds)]) for i, d in enumerate(claim.deliveries)]
        with session_scope(session_factory) as session:
            assert record_outcomes(session, claim.token, results, utcnow(), POLICY) == len(results)
    return statements


def test_delivering_a_chunk_costs_the_same_statements_for_10_and_100_deliveries(
    tenant, session_factory, engine
):
    users = add_users_with_devices(session_factory, tenant, 110, 1)
    ids = accept_quietly(session_factory, tenant, users)
    with session_scope(session_factory) as session:
        chunks = fan_out(session, ids, utcnow(), {"ios"}, 100)
    assert sorted(len(c.delivery_ids) for c in chunks) == [10, 100]
    by_size = {len(c.delivery_ids): c.delivery_ids for c in chunks}
    small = deliver_chunk_statements(engine, session_factory, by_size[10])
    large = deliver_chunk_statements(engine, session_factory, by_size[100])
    assert small == large
    # claim; outcomes; dead devices; lock notifications; refresh their statuses
    assert large == ["UPDATE", "UPDATE", "UPDATE", "SELECT", "UPDATE"]


def release_statements(engine, session_factory, delivery_ids, others) -> tuple[list[str], list[str]]:
    """Make the deliveries due retries; count the retry tick's release, then the sweep's (retries again).

    The test acts two hours ahead: the suite's running worker releases due retries every second and would
    otherwise take the test's rows first."""
    now = utcnow() + timedelta(hours=2)
    counts = []
    for release in (lambda session: release_due_retries(session, now, 100),
                    lambda session: release_due_deliveries(session, now, 60, 300, 100)):
        with session_scope(session_factory) as session:
            session.execute(update(Delivery).where(Delivery.id.in_(delivery_ids))
                            .values(status="retrying", next_attempt_at=now))
            # The other chunk's deliveries final: two hours ahead, the sweep would count them as lost too.
            session.execute(update(Delivery).where(Delivery.id.in_(others)).values(status="sent"))
        with counted(engine) as statements, session_scope(session_factory) as session:
            chunks = release(session)
        assert sum(len(c.delivery_ids) for c in chunks) == len(delivery_ids)
        counts.append(statements)
    return counts[0], counts[1]


def test_releasing_due_work_costs_the_same_statements_for_10_and_100_deliveries(tenant, session_factory, engine):
    users = add_users_with_devices(session_factory, tenant, 110, 1)
    ids = accept_quietly(session_factory, tenant, users)
    with session_scope(session_factory) as session:
        by_size = {len(c.delivery_ids): c.delivery_ids for c in fan_out(session, ids, utcnow(), {"ios"}, 100)}
    small_tick, small_sweep = release_statements(engine, session_factory, by_size[10], by_size[100])
    large_tick, large_sweep = release_statements(engine, session_factory, by_size[100], by_size[10])
    assert (small_tick, small_sweep) == (large_tick, large_sweep)
    # the tick: one bounded UPDATE (a CTE picks the rows; it returns their apps)
    assert large_tick == ["WITH"]
    # the sweep: one bounded UPDATE per kind (retries, lost enqueues, run-out leases)
    assert large_sweep == ["WITH", "WITH", "WITH"]
