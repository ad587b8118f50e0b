"""Broadcasts through HTTP with real workers and the Web Push stand-in: each device once, also after a
worker is SIGKILLed mid-fan-out; the rate holds within 10 %; a cancel stops what was not pushed."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections import Counter

import httpx
from sqlalchemy import func, select

from api.app import create_app
from shared.db import session_scope
from shared.models import Broadcast, Delivery, Device
from shared.services import enrollments, tags
from shared.tokens import canonical_token
from tests.support.harness import LiveServer, start_worker
from tests.support.helpers import wait_for

OPEN = ("pending", "sending", "retrying")


def audience_with_browsers(session_factory, app_id, push_service, count: int, tag_every: int = 0):
    """``count`` enrolled users with one Web Push subscription each (every ``tag_every``-th tagged "segment")."""
    users = [uuid.uuid4() for _ in range(count)]
    subscriptions = {}
    with session_scope(session_factory) as session:
        enrollments.enroll(session, app_id, users)
        for user in users:
            subscription = push_service.new_subscription()
            token, token_hash = canonical_token("web", json.dumps(subscription), allow_http=True)
            session.add(Device(app_id=app_id, user_id=user, platform="web", token=token, token_hash=token_hash))
            subscriptions[user] = subscription
        if tag_every:
            tags.replace_tags(session, app_id, {user: ["segment"] for user in users[::tag_every]})
    return subscriptions


def broadcast(http, tenant, audience, **extra) -> str:
    response = http.post("/push/broadcasts", json={"title": "Gym closes early", "body": "18:00", "audience": audience,
                                                   **extra}, headers=tenant.service_headers())
    assert response.status_code == 202, response.text
    return response.json()["broadcast_id"]


def read(http, tenant, broadcast_id) -> dict:
    return http.get(f"/push/broadcasts/{broadcast_id}", headers=tenant.service_headers()).json()


def completed(http, tenant, broadcast_id, timeout: float = 90) -> dict:
    return wait_for(lambda: (lambda b: b if b["status"] == "completed" else None)(read(http, tenant, broadcast_id)),
                    timeout=timeout)


def received(push_service, subscriptions) -> Counter:
    """Messages each user's subscription received."""
    return Counter({user: len(push_service.messages(sub)) for user, sub in subscriptions.items()})


def test_a_segment_then_everyone_each_device_exactly_once(api, worker, tenant, push_service, session_factory):
    subscriptions = audience_with_browsers(session_factory, tenant.id, push_service, 2000, tag_every=4)
    segment = set(list(subscriptions)[::4])
    first = broadcast(api, tenant, {"tags_any": ["segment"]})
    done = completed(api, tenant, first)
    assert (done["audience_size"], done["deliveries_created"], done["counts"]["sent"]) == (500, 500, 500)
    assert received(push_service, subscriptions) == Counter(dict.fromkeys(segment, 1))
    everyone = broadcast(api, tenant, {"everyone": True, "platforms": ["web"]})
    done = completed(api, tenant, everyone)
    assert (done["audience_size"], done["counts"]["sent"]) == (2000, 2000)
    assert received(push_service, subscriptions) == Counter({user: 1 + (user in segment) for user in subscriptions})
    some_user = next(iter(subscriptions))
    (result,) = api.get(f"/push/broadcasts/{everyone}/recipients?user_id={some_user}",
                        headers=tenant.service_headers()).json()["items"]
    assert (result["user_id"], result["status"]) == (str(some_user), "sent")


def test_the_rate_holds_within_ten_percent(api, worker, tenant, push_service, session_factory):
    subscriptions = audience_with_browsers(session_factory, tenant.id, push_service, 241)
    rate = 1200  # 20 a second: 240 intervals take 12 s
    done = completed(api, tenant, broadcast(api, tenant, {"everyone": True}, rate_per_minute=rate))
    assert done["counts"]["sent"] == 241
    times = sorted(message.received_at for sub in subscriptions.values() for message in push_service.messages(sub))
    measured = (len(times) - 1) / (times[-1] - times[0]) * 60
    assert abs(measured - rate) <= rate * 0.10, measured


def test_cancel_stops_what_was_not_pushed(api, worker, tenant, push_service, session_factory):
    subscriptions = audience_with_browsers(session_factory, tenant.id, push_service, 300)
    broadcast_id = broadcast(api, tenant, {"everyone": True}, rate_per_minute=600)  # 10 a second: 30 s in all
    wait_for(lambda: sum(received(push_service, subscriptions).values()) >= 20)
    assert api.delete(f"/push/broadcasts/{broadcast_id}", headers=tenant.service_headers()).json() == {"status": "cancelled"}

    def settled():
        b = read(api, tenant, broadcast_id)
        return b if not any(b["counts"][status] for status in OPEN) else None

    after = wait_for(settled)
    pushed = sum(received(push_service, subscriptions).values())
    assert pushed == after["counts"]["sent"] < 300 and after["status"] == "cancelled"
    assert after["counts"]["cancelled"] == after["deliveries_created"] - pushed
    # Nothing is left to push: the fan-out stopped (no next step) and every delivery is closed.
    with session_scope(session_factory) as session:
        stopped = session.get(Broadcast, uuid.UUID(broadcast_id))
        assert (stopped.step_token, stopped.deliveries_created) == (None, after["deliveries_created"])


def test_a_worker_sigkilled_mid_fan_out_resumes_without_skipping_or_repeating(own_services, push_service, tmp_path):
    """Kill -9 the worker while the fan-out pages; a new worker resumes from the committed cursor.

    The fan-out itself repeats and skips nobody (one delivery per device: the cursor is committed with each
    page, the unique constraint guards the rest). A push the killed worker had in flight may be pushed again
    once its claim's lease runs out (at least once): only those may arrive twice.
    """
    # A short lease, still longer than a chunk's hard time limit (one wave of 3 s push deadlines + margins).
    env = own_services.env(PUSHQ_CLAIM_LEASE_SECONDS="10", PUSHQ_PUSH_DEADLINE_SECONDS="3",
                           PUSHQ_DELIVERY_CHUNK_SIZE="25", PUSHQ_PUSH_CONCURRENCY="25", PUSHQ_MAX_ATTEMPTS="5",
                           PUSHQ_BROADCAST_PAGE_SIZE="50", PUSHQ_SWEEP_AFTER_SECONDS="2", PUSHQ_SWEEP_INTERVAL="0.5")
    session_factory = own_services.session_factory
    tenant = own_services.tenant()
    subscriptions = audience_with_browsers(session_factory, tenant.id, push_service, 1200)
    server = LiveServer(create_app(own_services.settings)).start()
    client = httpx.Client(base_url=server.url, trust_env=False, timeout=30)

    def created() -> int:
        with session_factory() as session:
            return session.scalar(select(func.count()).select_from(Delivery))

    first = start_worker(env, tmp_path / "first.log", tmp_path / "first.schedule")
    try:
        broadcast_id = broadcast(client, tenant, {"everyone": True}, rate_per_minute=6000)  # 100 a second
        wait_for(lambda: created() >= 300)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        first.log_file.close()
    with session_factory() as session:
        at_kill = session.get(Broadcast, uuid.UUID(broadcast_id))
        assert at_kill.fanned_out_at is None and 300 <= at_kill.deliveries_created < 1200  # killed mid-fan-out
        in_flight = session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "sending"))

    second = start_worker(env, tmp_path / "second.log", tmp_path / "second.schedule")
    try:
        done = completed(client, tenant, broadcast_id, timeout=120)
    finally:
        second.terminate()
        second.wait(timeout=20)
        second.log_file.close()
        client.close()
        server.stop()
    assert done["deliveries_created"] == 1200
    assert {status: count for status, count in done["counts"].items() if count} == {"sent": 1200}
    with session_factory() as session:
        per_device = Counter(session.scalars(select(Delivery.device_id)))
        assert len(per_device) == 1200 and set(per_device.values()) == {1}
    counts = received(push_service, subscriptions)
    assert min(counts.values()) == 1
    assert sum(counts.values()) - 1200 <= in_flight  # only pushes in flight at the kill may come twice
