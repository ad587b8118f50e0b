"""The broadcast figure: one ``POST /push/broadcasts`` to every user of an app with one Web Push device each.

Measured in the same run as the bulk path (bench/pipeline.py): the accept's latency (it counts the audience
with one COUNT and stores one message, whatever the audience), the first push after the accept, every
delivery final per delivery against the bulk path's, the worker pool's RSS growth, and the database's bytes
per delivery at rest (bench/storage.py: the message is stored once, not one notification row per user).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from bench import storage

if TYPE_CHECKING:
    from bench.pipeline import Context


def add_web_audience(ctx: Context, app_id: uuid.UUID, public_key: str, users: int) -> None:
    """Enroll ``users`` users with one Web Push subscription each, in batches, without the API."""
    import json

    from shared.db import session_scope
    from shared.models import Device
    from shared.services.enrollments import enroll
    from shared.tokens import canonical_token

    for start in range(0, users, 1000):
        count = min(1000, users - start)
        user_ids = [uuid.uuid4() for _ in range(count)]
        subscriptions = ctx.webpush.subscriptions(count, public_key)
        with session_scope(ctx.session_factory) as session:
            enroll(session, app_id, user_ids)
            for user_id, subscription in zip(user_ids, subscriptions, strict=True):
                token, token_hash = canonical_token("web", json.dumps(subscription), allow_http=True)
                session.add(Device(app_id=app_id, user_id=user_id, platform="web", token=token, token_hash=token_hash))
        if (start // 1000) % 10 == 9:
            ctx.progress(f"broadcast: {start + count:,} of {users:,} users with a browser")


def first_sent_at(ctx: Context, broadcast_id: str) -> float | None:
    with ctx.engine.connect() as connection:
        value = connection.execute(text(
            "SELECT extract(epoch FROM min(d.sent_at)) FROM deliveries d JOIN broadcasts b "
            "ON b.notification_id = d.notification_id WHERE b.id = :id"), {"id": broadcast_id}).scalar()
    return float(value) if value is not None else None


def phase_broadcast(ctx: Context, users: int) -> dict[str, Any]:
    """Accept a broadcast to ``users`` browsers; wait for every outcome; what it cost."""
    from bench.pipeline import create_tenant, db_now, http_client, pool_rss, service_headers, wait_final
    from bench.procs import wait_until

    assert ctx.worker is not None
    app_id, public_key = create_tenant(ctx, "bench broadcast")
    ctx.progress(f"broadcast: {users:,} users with one Web Push device each")
    add_web_audience(ctx, app_id, public_key, users)
    # storage.measured starts with VACUUM ANALYZE: the audience COUNT then reads the planner's fresh view.
    headers = service_headers(ctx, app_id)
    rss_before = pool_rss(ctx.worker.pid)
    result: dict[str, Any] = {}

    def run() -> None:
        since = db_now(ctx)
        with http_client(ctx) as http:
            start = time.time()
            response = http.post("/push/broadcasts", json={"title": "Gym closes early", "body": "Today at 18:00",
                                                            "audience": {"everyone": True}}, headers=headers)
            accepted = time.time()
            if response.status_code != 202:
                raise RuntimeError(f"broadcast refused: {response.status_code} {response.text}")
        broadcast_id = response.json()["broadcast_id"]
        first = wait_until("broadcast: the first push", lambda: first_sent_at(ctx, broadcast_id),
                           ctx.scale.drain_timeout, 0.02)
        end = wait_final(ctx, f"broadcast: {users:,} deliveries to be final", app_id, since, users,
                         ctx.scale.drain_timeout, 0.5)
        result.update(deliveries=users, accept_s=accepted - start, first_push_s=float(first) - accepted,  # type: ignore[arg-type]
                      seconds=end - start, seconds_per_delivery=(end - start) / users)

    _, cost = storage.measured(ctx.engine, run, users)
    rss_after = pool_rss(ctx.worker.pid)
    before, after = sum(rss_before.values()), sum(rss_after.values())
    result.update(storage=cost, rss_before_total=before, rss_after_total=after,
                  rss_growth=(after - before) / before if before else float("nan"))
    ctx.progress(f"broadcast: accepted in {result['accept_s'] * 1e3:.1f} ms, first push {result['first_push_s']:.2f} s "
                 f"after, {users:,} final in {result['seconds']:.1f} s "
                 f"({result['seconds_per_delivery'] * 1e6:,.0f} µs/delivery), pool RSS growth "
                 f"{result['rss_growth'] * 100:.1f} %; {storage.describe('broadcast', cost)}")
    return result
