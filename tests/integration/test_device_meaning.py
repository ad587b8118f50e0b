"""A delivery is pushed only to the device as it was when it was created for the notification's user.

Between fan-out and push a device can change meaning: registered by another user
(a shared browser, another sign-in), disabled and registered again, moved away
and back. The claim closes such deliveries unpushed, with a last_error that says
why; the same user refreshing the registration keeps their pending messages.
Rules on a real database, without Celery (the HTTP + worker flow is in
tests/e2e/test_e2e_webpush_retries.py).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import select

from shared.clock import utcnow
from shared.db import session_scope
from shared.models import Delivery, Device, Notification
from shared.outcomes import Outcome
from shared.pipeline.claim import claim_chunk
from shared.pipeline.fanout import fan_out
from shared.pipeline.record import record_outcomes
from shared.pipeline.sweep import release_due_deliveries
from shared.pipeline.values import RetryPolicy
from shared.services.devices import register_device, unregister_device
from shared.services.sends import SendRequest, create_notifications

POLICY = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=10)
LEASE = 300
DEVICE_OTHER_OWNER = "device registered by another user since fan-out: not pushed"
DEVICE_RE_REGISTERED = "device registered again since fan-out (re-enabled or moved between users): not pushed"


@dataclass
class Shared:
    """One browser (a web subscription) that user ``a`` registered, and user ``b`` who may sign in on it."""

    tenant: object
    session_factory: object
    a: uuid.UUID
    b: uuid.UUID
    token: str

    def register(self, user: uuid.UUID, token: str | None = None) -> uuid.UUID:
        with session_scope(self.session_factory) as session:
            return register_device(session, app_id=self.tenant.id, user_id=user, platform="web",  # type: ignore[attr-defined]
                                   push_token=token or self.token, allow_http_endpoints=True).device_id

    def send(self, user: uuid.UUID, title: str) -> list[uuid.UUID]:
        """Accept and fan out a notification; its delivery ids."""
        with session_scope(self.session_factory) as session:
            (notification_id,) = create_notifications(
                session, self.tenant.id, [SendRequest(user_id=user, title=title, body="b")],  # type: ignore[attr-defined]
                default_ttl=600, enqueue=lambda ids: None,
            ).notification_ids
        with session_scope(self.session_factory) as session:
            chunks = fan_out(session, [notification_id], utcnow(), {"web"}, 100)
        return [i for chunk in chunks for i in chunk.delivery_ids]

    def claim(self, delivery_ids, now=None):
        with session_scope(self.session_factory) as session:
            return claim_chunk(session, delivery_ids, now or utcnow(), LEASE, POLICY.max_attempts)

    def delivery(self, delivery_id) -> Delivery:
        with session_scope(self.session_factory) as session:
            return session.get(Delivery, delivery_id)

    def notification_status(self, delivery_id) -> str:
        with session_scope(self.session_factory) as session:
            return session.scalar(select(Notification.status).join(Delivery).where(Delivery.id == delivery_id))


@pytest.fixture
def browser(tenant, session_factory, push_service) -> Shared:
    a, b = uuid.uuid4(), uuid.uuid4()
    tenant.enroll(a, b)
    shared = Shared(tenant, session_factory, a, b, json.dumps(push_service.new_subscription()))
    shared.register(a)
    return shared


def assert_closed_unpushed(browser: Shared, delivery_id, reason: str) -> None:
    row = browser.delivery(delivery_id)
    assert (row.status, row.last_error) == ("rejected", reason)
    assert row.claim_token is None and row.sent_at is None
    assert browser.notification_status(delivery_id) == "failed"


def test_a_device_moved_to_another_user_before_the_first_push_is_not_pushed(browser):
    (for_a,) = browser.send(browser.a, "private for A")
    browser.register(browser.b)  # B signs in on the same browser
    result = browser.claim([for_a])
    assert result.deliveries == [] and result.closed == 1
    assert_closed_unpushed(browser, for_a, DEVICE_OTHER_OWNER)
    # What is sent to B from now on goes to B's device.
    (for_b,) = browser.send(browser.b, "for B")
    (claimed,) = browser.claim([for_b]).deliveries
    assert claimed.message.title == "for B"


def test_a_retry_of_the_previous_owner_is_closed_when_the_device_moved(browser):
    """The issue's case: A's push got 429 and waits for its retry; B signs in; the retry must not go out."""
    (for_a,) = browser.send(browser.a, "private for A")
    now = utcnow()
    held = browser.claim([for_a], now)
    with session_scope(browser.session_factory) as session:
        record_outcomes(session, held.token, [(held.deliveries[0], Outcome.retry("429", retry_after=2))], now, POLICY)
    browser.register(browser.b)
    due = now + timedelta(seconds=3)
    with session_scope(browser.session_factory) as session:
        (chunk,) = release_due_deliveries(session, due, 60, LEASE, 100)
    assert chunk.delivery_ids == [for_a]
    result = browser.claim([for_a], due)
    assert result.deliveries == [] and result.closed == 1
    assert_closed_unpushed(browser, for_a, DEVICE_OTHER_OWNER)
    assert browser.delivery(for_a).attempts == 1


def test_a_claim_whose_worker_died_is_closed_when_the_device_moved_meanwhile(browser):
    (for_a,) = browser.send(browser.a, "private for A")
    now = utcnow()
    browser.claim([for_a], now)  # the worker dies holding it
    browser.register(browser.b)
    later = now + timedelta(seconds=LEASE + 1)
    with session_scope(browser.session_factory) as session:
        released = release_due_deliveries(session, later, 60, LEASE, 100)
    assert [i for chunk in released for i in chunk.delivery_ids] == [for_a]
    assert browser.claim([for_a], later).deliveries == []
    assert_closed_unpushed(browser, for_a, DEVICE_OTHER_OWNER)


def test_a_device_moved_away_and_back_is_not_pushed_what_was_fanned_out_before(browser):
    (for_a,) = browser.send(browser.a, "private for A")
    browser.register(browser.b)
    browser.register(browser.a)  # the same owner again, but not the same registration
    assert browser.claim([for_a]).deliveries == []
    assert_closed_unpushed(browser, for_a, DEVICE_RE_REGISTERED)


def test_a_device_disabled_then_registered_again_is_not_pushed_what_was_fanned_out_before(browser):
    """Unregistered (signed out), then registered again: the old messages were closed to it."""
    (for_a,) = browser.send(browser.a, "before sign-out")
    device_id = browser.delivery(for_a).device_id
    with session_scope(browser.session_factory) as session:
        unregister_device(session, device_id, user_id=browser.a)
    assert browser.register(browser.a) == device_id  # re-enabled, same row
    assert browser.claim([for_a]).deliveries == []
    assert_closed_unpushed(browser, for_a, DEVICE_RE_REGISTERED)
    (after,) = browser.send(browser.a, "after sign-in")
    assert [d.message.title for d in browser.claim([after]).deliveries] == ["after sign-in"]


def test_the_same_user_registering_again_keeps_their_pending_messages(browser, push_service):
    """A refresh (last_seen_at) or refreshed keys of the same subscription: the messages still go, with the new keys."""
    first, second = browser.send(browser.a, "one"), browser.send(browser.a, "two")
    device_id = browser.register(browser.a)  # same token: a refresh
    refreshed = {**json.loads(browser.token), "keys": push_service.new_subscription()["keys"]}
    assert browser.register(browser.a, json.dumps(refreshed)) == device_id
    with session_scope(browser.session_factory) as session:
        assert session.get(Device, device_id).generation == 0
    claimed = browser.claim(first + second).deliveries
    assert sorted(d.message.title for d in claimed) == ["one", "two"]
    assert {json.loads(d.token)["keys"]["auth"] for d in claimed} == {refreshed["keys"]["auth"]}


def test_each_change_of_meaning_moves_the_generation_once(browser):
    device_id = browser.register(browser.a)

    def generation() -> int:
        with session_scope(browser.session_factory) as session:
            return session.get(Device, device_id).generation

    assert generation() == 0
    browser.register(browser.b)
    assert generation() == 1
    browser.register(browser.b)  # B refreshing: no change
    assert generation() == 1
    with session_scope(browser.session_factory) as session:
        unregister_device(session, device_id, user_id=browser.b)
    assert generation() == 1  # disabling alone is caught by disabled_at
    browser.register(browser.b)
    assert generation() == 2
