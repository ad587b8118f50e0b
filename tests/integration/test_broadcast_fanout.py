"""The broadcast fan-out's rules over a session: pages, cursor, segment, pacing, completion (no workers)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select

from shared.broadcast_fanout import fan_out_step, lost_steps
from shared.clock import utcnow
from shared.db import session_scope
from shared.models import Broadcast, Delivery, WebhookEvent
from shared.outcomes import Outcome
from shared.pipeline.claim import claim_chunk
from shared.pipeline.record import record_outcomes
from shared.pipeline.values import RetryPolicy
from shared.services import broadcasts, enrollments, tags, webhooks
from shared.services.sends import SendRequest
from tests.support.builders import add_device

PLATFORMS = ("web", "ios", "android")


def accept(session_factory, app_id, audience, rate=None) -> Broadcast:
    with session_scope(session_factory) as session:
        accepted = broadcasts.create_broadcast(
            session, app_id, SendRequest(user_id=broadcasts.NO_USER, title="t", body="b"), audience,
            rate_per_minute=rate, default_ttl=3600, enqueue_step=lambda *_: None)
        session.expunge(accepted.broadcast)
        return accepted.broadcast


def users_with_devices(session_factory, app_id, count, devices_each=1, tag_every=None):
    users = [uuid.uuid4() for _ in range(count)]
    with session_scope(session_factory) as session:
        enrollments.enroll(session, app_id, users)
        for index, user in enumerate(users):
            for _ in range(devices_each):
                add_device(session, app_id, user)
            if tag_every and index % tag_every == 0:
                tags.set_tags(session, app_id, user, ["segment"])
    return users


def step(session_factory, broadcast, page_size=7, now=None):
    with session_scope(session_factory) as session:
        return fan_out_step(session, broadcast.id, broadcast.step_token, now or utcnow(), PLATFORMS, page_size, 3)


def test_pages_cover_the_audience_once_each_in_cursor_order(session_factory, tenant):
    users = users_with_devices(session_factory, tenant.id, 10, devices_each=2)
    broadcast = accept(session_factory, tenant.id, broadcasts.Audience())
    created, steps = 0, 0
    while True:
        result = step(session_factory, broadcast)
        created, steps = created + result.created, steps + 1
        assert all(len(chunk.delivery_ids) <= 3 for chunk in result.chunks)
        if result.fanned_out:
            break
    assert (created, steps) == (20, 3)
    with session_scope(session_factory) as session:
        rows = session.execute(select(Delivery.user_id, func.count()).group_by(Delivery.user_id)).all()
        assert sorted(rows) == sorted((user, 2) for user in users)
        assert session.get(Broadcast, broadcast.id).deliveries_created == 20
    assert step(session_factory, broadcast).created == 0  # a late copy of a step does nothing


def test_a_segment_pages_only_its_users_and_a_stale_token_does_nothing(session_factory, tenant):
    users = users_with_devices(session_factory, tenant.id, 9, tag_every=3)
    broadcast = accept(session_factory, tenant.id, broadcasts.Audience(tags_any=("segment",)))
    assert broadcast.audience_size == 3
    with session_scope(session_factory) as session:
        assert fan_out_step(session, broadcast.id, uuid.uuid4(), utcnow(), PLATFORMS, 100, 3).created == 0
    assert step(session_factory, broadcast, page_size=100).created == 3
    with session_scope(session_factory) as session:
        assert set(session.scalars(select(Delivery.user_id))) == {users[0], users[3], users[6]}


def test_the_rate_releases_deliveries_as_time_passes(session_factory, tenant):
    users_with_devices(session_factory, tenant.id, 10)
    broadcast = accept(session_factory, tenant.id, broadcasts.Audience(), rate=60)  # one a second
    start = broadcast.next_step_at
    first = step(session_factory, broadcast, page_size=100, now=start)
    assert (first.created, first.next_in_seconds) == (1, 1.0)
    # 4.5 s later (a slow queue): one second's backlog is caught up, not everything owed.
    late = step(session_factory, broadcast, page_size=100, now=start + timedelta(seconds=4.5))
    assert (late.created, late.next_in_seconds) == (2, 1.0)
    early = step(session_factory, broadcast, page_size=100, now=start + timedelta(seconds=4.7))
    assert early.created == 0 and abs(early.next_in_seconds - 0.8) < 1e-6
    on_time = step(session_factory, broadcast, page_size=100, now=start + timedelta(seconds=5.5))
    assert (on_time.created, on_time.next_in_seconds) == (1, 1.0)


def test_the_last_outcome_completes_the_broadcast_with_its_counts(session_factory, tenant):
    users_with_devices(session_factory, tenant.id, 4)
    with session_scope(session_factory) as session:
        webhooks.set_endpoint(session, tenant.id, "http://127.0.0.1:9/hook", allow_http_loopback=True)
    broadcast = accept(session_factory, tenant.id, broadcasts.Audience())
    result = step(session_factory, broadcast, page_size=100)
    assert result.fanned_out
    for chunk in result.chunks:
        with session_scope(session_factory) as session:
            claim = claim_chunk(session, chunk.delivery_ids, utcnow(), 60, 5)
        with session_scope(session_factory) as session:
            record_outcomes(session, claim.token, [(d, Outcome.sent("m")) for d in claim.deliveries], utcnow(),
                            RetryPolicy())
    with session_scope(session_factory) as session:
        done = session.get(Broadcast, broadcast.id)
        assert done.status == "completed" and done.final_counts == {"sent": 4} and done.finished_at is not None
        (event,) = session.scalars(select(WebhookEvent)).all()
        assert (event.event_type, event.payload["broadcast_id"], event.payload["counts"]) == (
            "broadcast.completed", str(broadcast.id), {"sent": 4})


def test_an_overdue_step_gets_a_new_token(session_factory, tenant):
    users_with_devices(session_factory, tenant.id, 2)
    broadcast = accept(session_factory, tenant.id, broadcasts.Audience())
    with session_scope(session_factory) as session:
        assert lost_steps(session, utcnow(), 60) == []
        ((broadcast_id, token),) = lost_steps(session, utcnow() + timedelta(seconds=120), 60)
    assert broadcast_id == broadcast.id and token != broadcast.step_token
    assert step(session_factory, broadcast).created == 0  # the old chain's token no longer counts
