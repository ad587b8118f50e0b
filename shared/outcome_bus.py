"""Announcing recorded outcomes to the API calls that wait for them (Redis pub/sub).

``POST /v1/push/send`` answers with the first outcome of every subscription, so
it waits for the workers. Instead of polling the database, it subscribes to one
channel per notification; a worker that wrote outcomes of such a notification
(flagged ``notify_outcomes`` at accept) publishes to it, and the waiter reads the
database once per announcement. Concurrent waits are capped per app across all
API processes, so slow push services cannot tie up every API thread.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import redis

_CHANNEL = "pushq:outcomes:{}"
_WAITS = "pushq:waits:{}"
# Released by the waiter; expires in case its process died mid-wait.
_WAIT_SLOT_TTL_SECONDS = 300


def publish_outcomes(client: redis.Redis, notification_ids: Iterable[uuid.UUID]) -> None:
    """Tell waiters these notifications have new outcomes (one round trip for all)."""
    ids = sorted(set(notification_ids))
    if not ids:
        return
    with client.pipeline(transaction=False) as pipe:
        for notification_id in ids:
            pipe.publish(_CHANNEL.format(notification_id), b"1")
        pipe.execute()


@contextmanager
def wait_slot(client: redis.Redis, app_id: uuid.UUID, limit: int) -> Iterator[bool]:
    """One of the app's ``limit`` concurrent waits, if one is free (yields False otherwise)."""
    key = _WAITS.format(app_id)
    with client.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, _WAIT_SLOT_TTL_SECONDS)
        taken, _ = pipe.execute()
    try:
        yield taken <= limit
    finally:
        client.decr(key)


def wait_for_outcomes(
    client: redis.Redis,
    notification_id: uuid.UUID,
    done: Callable[[], bool],
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Block until ``done()`` is true (checked now and at each announcement) or ``timeout`` passes."""
    deadline = clock() + timeout
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(_CHANNEL.format(notification_id))
        if done():  # outcomes written before the subscription took effect
            return True
        while (left := deadline - clock()) > 0:
            if pubsub.get_message(timeout=left) is not None and done():
                return True
        return done()
    finally:
        pubsub.close()
